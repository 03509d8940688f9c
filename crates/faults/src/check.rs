//! Checkers for recorded histories.
//!
//! * [`check_register`]: Wing–Gong–Lowe (WGL) linearizability search over
//!   per-key read/write registers.
//! * [`check_set`]: lost / duplicated / unexpected elements of an add-only set.
//! * [`check_staleness`]: `bounded_staleness` reads of the registers, against the bound
//!   and per (client, node) monotonicity.
//!
//! # How a history becomes register operations
//!
//! Invocations are paired with their completions per process. Then, per op:
//!
//! | op    | completion          | treatment                                   |
//! |-------|---------------------|---------------------------------------------|
//! | write | `Ok`                | call at invoke, return at completion        |
//! | write | `Info` / none       | call at invoke, return at +infinity         |
//! | write | `Fail`              | dropped: it definitely did not happen       |
//! | read  | `Ok`                | call at invoke, return at completion        |
//! | read  | `Fail`/`Info`/none  | dropped: no effect and no observed value    |
//!
//! A return at +infinity means the write may take effect at any point after
//! its invoke, including "never" (linearized after everything else, where
//! nothing can observe it).
//!
//! # Timestamp ties
//!
//! Events are ordered by `(time_ns, position in the history)`. Real-time
//! precedence ("A returned before B was invoked") must only be assumed when
//! it is certain, otherwise the checker could reject a linearizable history.
//! When two events share a timestamp their *recorded order* is what actually
//! happened: [`crate::history::Recorder`] stamps the time while holding the
//! lock that appends the entry. So:
//!
//! * a completion recorded *before* an invoke at the same timestamp is ordered
//!   first (return before call): A's response had already arrived before B's
//!   request was sent, so A really precedes B and treating them as
//!   concurrent would only hide violations;
//! * an invoke recorded *before* a completion at the same timestamp is ordered
//!   first (call before return): the two ops really overlapped.
//!
//! This is exact for recorder-produced histories. Ordering all returns before
//! all calls at equal timestamps regardless of recorded order would be unsound
//! (it invents a precedence that may not exist); ordering all calls first is
//! sound but weaker. For histories from elsewhere, keep entries in the order
//! they were observed.

use crate::history::{Op, OpF, OpKind};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Verdict of a linearizability check.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Every key has a valid linearization.
    Linearizable,
    /// Some key has none; the message names the key(s) and the op the search
    /// could not justify.
    NotLinearizable(String),
    /// The search was cut off (see `max_states`); the message names the key(s).
    Unknown(String),
}

impl Outcome {
    /// True only for [`Outcome::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Outcome::Linearizable)
    }
}

/// Result of [`check_register`].
#[derive(Clone, Debug)]
pub struct RegisterReport {
    /// Overall verdict: `NotLinearizable` if any key is, else `Unknown` if any
    /// key's search was cut off, else `Linearizable`.
    pub outcome: Outcome,
    /// Keys with at least one read or write in the history.
    pub keys: usize,
    /// Ops considered by the search (after dropping failed writes and reads
    /// that did not complete `Ok`).
    pub ops: usize,
    /// Distinct (linearized set, register state) configurations visited,
    /// summed over keys.
    pub states_explored: u64,
}

/// Wing–Gong–Lowe linearizability check of a per-key read/write register
/// history (keys are independent: check each key separately; the report is
/// NotLinearizable if any key is). Initial value of each register: None.
///
/// `max_states` bounds the configurations explored *per key*; a key that
/// exceeds it makes the outcome `Unknown` (unless another key is definitely
/// not linearizable). All keys are always checked so every bad key is named.
pub fn check_register(history: &[Op], max_states: u64) -> RegisterReport {
    let keys = register_histories(history);
    let mut report = RegisterReport {
        outcome: Outcome::Linearizable,
        keys: keys.len(),
        ops: 0,
        states_explored: 0,
    };
    let mut bad = Vec::new();
    let mut unknown = Vec::new();
    for (key, key_history) in &keys {
        report.ops += key_history.ops.len();
        let result = check_key(key, key_history, max_states);
        report.states_explored += result.states;
        match result.outcome {
            Outcome::Linearizable => {}
            Outcome::NotLinearizable(msg) => bad.push(msg),
            Outcome::Unknown(msg) => unknown.push(msg),
        }
    }
    report.outcome = combine(bad, unknown);
    report
}

/// Folds per-key messages into one verdict; bad beats unknown.
fn combine(bad: Vec<String>, unknown: Vec<String>) -> Outcome {
    if !bad.is_empty() {
        Outcome::NotLinearizable(join_capped(bad))
    } else if !unknown.is_empty() {
        Outcome::Unknown(join_capped(unknown))
    } else {
        Outcome::Linearizable
    }
}

/// Joins per-key messages, keeping the verdict readable when many keys fail.
fn join_capped(messages: Vec<String>) -> String {
    const SHOWN: usize = 5;
    let total = messages.len();
    let mut out = messages
        .into_iter()
        .take(SHOWN)
        .collect::<Vec<_>>()
        .join("\n");
    if total > SHOWN {
        out.push_str(&format!("\n... and {} more keys", total - SHOWN));
    }
    out
}

// ---------------------------------------------------------------------------
// Bounded-staleness reads
// ---------------------------------------------------------------------------

/// One client on one node reading one key: (process, node, key).
type Session<'a> = (u64, Option<u64>, &'a str);

/// Checks every `Ok` stale read of a register (read at `bounded_staleness:<bound>`):
///
/// * it may not miss a write acknowledged more than `bound_ns` before the read was
///   invoked: returning nothing while such a write exists, or a value whose write had
///   completed before such a write was even invoked (so it was overwritten before the
///   bound), is a violation;
/// * it may not return a value no client wrote;
/// * one client reading one node never goes backwards: a later stale read returning a
///   value whose write completed before the write of an earlier read's value was invoked
///   is a violation.
///
/// Returns (stale reads checked, violations).
pub fn check_staleness(history: &[Op], bound_ns: u64) -> (usize, Vec<String>) {
    // Per key, every write that may have happened: value → (invoke, ack time or None).
    let mut writes: HashMap<&str, HashMap<i64, (u64, Option<u64>)>> = HashMap::new();
    let paired = pair_ops(history);
    for p in &paired {
        if p.invoke.f != OpF::Write || p.outcome() == OpKind::Fail {
            continue;
        }
        if let Some(v) = p.written_value() {
            let acked = (p.outcome() == OpKind::Ok)
                .then(|| p.completion.map(|(_, op)| op.time_ns))
                .flatten();
            writes
                .entry(p.invoke.key.as_str())
                .or_default()
                .insert(v, (p.invoke.time_ns, acked));
        }
    }
    let empty = HashMap::new();
    let mut checked = 0;
    let mut bad = vec![];
    // (process, node, key) → the write behind the value the last stale read returned.
    let mut last_seen: HashMap<Session<'_>, (i64, u64)> = HashMap::new();
    for p in &paired {
        if p.invoke.f != OpF::StaleRead || p.outcome() != OpKind::Ok {
            continue;
        }
        checked += 1;
        let key = p.invoke.key.as_str();
        let ws = writes.get(key).unwrap_or(&empty);
        let at = p.invoke.time_ns;
        let horizon = at.saturating_sub(bound_ns);
        let got = p.completion.and_then(|(_, op)| op.value);
        // The newest-acknowledged write every read after `horizon` must reflect.
        let must = ws
            .iter()
            .filter_map(|(v, (inv, ack))| ack.filter(|a| *a < horizon).map(|a| (a, *v, *inv)))
            .max();
        let line = p.invoke_line + 1;
        match got {
            None => {
                if let Some((a, v, _)) = must {
                    bad.push(format!(
                        "{key}: stale read (line {line}, invoked at {at} ns) saw nothing, but v={v} was acknowledged at {a} ns, more than the bound before"
                    ));
                }
            }
            Some(x) => match ws.get(&x) {
                None => bad.push(format!(
                    "{key}: stale read (line {line}) returned v={x}, which no client wrote"
                )),
                Some((_, x_ack)) => {
                    let overwritten = ws.iter().find(|(v, (inv, ack))| {
                        **v != x
                            && ack.is_some_and(|a| a < horizon)
                            && x_ack.is_some_and(|xa| xa < *inv)
                    });
                    if let Some((v, (_, ack))) = overwritten {
                        bad.push(format!(
                            "{key}: stale read (line {line}, invoked at {at} ns) returned v={x}, overwritten by v={v} acknowledged at {} ns, more than the bound before",
                            ack.unwrap_or(0)
                        ));
                    }
                    let session = (p.invoke.process, p.invoke.node, key);
                    let (x_inv, x_ack) = ws[&x];
                    if let Some((y, y_inv)) = last_seen.get(&session) {
                        if x_ack.is_some_and(|xa| xa < *y_inv) {
                            bad.push(format!(
                                "{key}: stale reads of one client on one node went backwards (line {line}): v={x} after v={y}"
                            ));
                        }
                    }
                    last_seen.insert(session, (x, x_inv));
                }
            },
        }
    }
    (checked, bad)
}

// ---------------------------------------------------------------------------
// Pairing invocations with completions
// ---------------------------------------------------------------------------

/// An invocation together with its completion, if one was recorded.
/// Line numbers are 0-based indexes into the history.
#[derive(Clone, Copy, Debug)]
struct Paired<'a> {
    invoke_line: usize,
    invoke: &'a Op,
    completion: Option<(usize, &'a Op)>,
}

impl Paired<'_> {
    /// Completion kind; a missing completion counts as `Info`.
    fn outcome(&self) -> OpKind {
        self.completion.map_or(OpKind::Info, |(_, op)| op.kind)
    }

    /// The op's value: the invoke's, else the completion's.
    fn written_value(&self) -> Option<i64> {
        self.invoke
            .value
            .or_else(|| self.completion.and_then(|(_, op)| op.value))
    }
}

/// Pairs each invoke with the next completion of the same process, in
/// history order. Malformed histories are read leniently and conservatively:
/// an invoke superseded by another invoke of its process stays uncompleted
/// (= `Info`), and a completion with no outstanding invoke is ignored (it has
/// no call time, so it cannot be placed in real time).
fn pair_ops(history: &[Op]) -> Vec<Paired<'_>> {
    let mut paired: Vec<Paired<'_>> = Vec::new();
    let mut pending: HashMap<u64, usize> = HashMap::new();
    for (line, op) in history.iter().enumerate() {
        if op.kind == OpKind::Invoke {
            pending.insert(op.process, paired.len());
            paired.push(Paired {
                invoke_line: line,
                invoke: op,
                completion: None,
            });
        } else if let Some(slot) = pending.remove(&op.process) {
            paired[slot].completion = Some((line, op));
        }
    }
    paired
}

// ---------------------------------------------------------------------------
// Register operations
// ---------------------------------------------------------------------------

/// State of one register: `None` until first written.
type RegState = Option<i64>;

/// A register op as the WGL search sees it.
#[derive(Clone, Debug)]
struct RegOp {
    process: u64,
    /// `Read` or `Write`.
    f: OpF,
    /// Written value, or the value an `Ok` read returned.
    value: Option<i64>,
    call: u64,
    /// Return time; `None` means +infinity (outcome unknown).
    ret: Option<u64>,
    /// Completion kind (`Info` when there was no completion).
    kind: OpKind,
    invoke_line: usize,
    completion_line: Option<usize>,
}

/// The register ops of one key, plus the values of its failed writes (only
/// used to explain why a read value is impossible).
#[derive(Debug, Default)]
struct KeyHistory {
    ops: Vec<RegOp>,
    failed_writes: HashSet<i64>,
}

/// Groups read/write ops by key (sorted, so reports are deterministic).
fn register_histories(history: &[Op]) -> BTreeMap<&str, KeyHistory> {
    let mut keys: BTreeMap<&str, KeyHistory> = BTreeMap::new();
    for paired in pair_ops(history) {
        if matches!(paired.invoke.f, OpF::Add | OpF::StaleRead) {
            continue;
        }
        let key_history = keys.entry(paired.invoke.key.as_str()).or_default();
        if let Some(op) = reg_op(&paired) {
            key_history.ops.push(op);
        } else if paired.invoke.f == OpF::Write && paired.outcome() == OpKind::Fail {
            key_history.failed_writes.extend(paired.written_value());
        }
    }
    keys
}

/// Converts a paired read/write into a search op, or `None` if it must be
/// dropped (see the module docs for the table of rules).
fn reg_op(paired: &Paired<'_>) -> Option<RegOp> {
    let kind = paired.outcome();
    // Clamp so a (malformed) completion stamped before its invoke still
    // returns after it is called.
    let completed_at = paired
        .completion
        .map(|(_, op)| op.time_ns.max(paired.invoke.time_ns));
    let (value, ret) = match (paired.invoke.f, kind) {
        (OpF::Add | OpF::StaleRead, _) | (_, OpKind::Fail) => return None,
        (OpF::Read, OpKind::Ok) => (paired.completion.and_then(|(_, op)| op.value), completed_at),
        (OpF::Read, _) => return None,
        (OpF::Write, OpKind::Ok) => (paired.written_value(), completed_at),
        (OpF::Write, _) => (paired.written_value(), None),
    };
    Some(RegOp {
        process: paired.invoke.process,
        f: paired.invoke.f,
        value,
        call: paired.invoke.time_ns,
        ret,
        kind,
        invoke_line: paired.invoke_line,
        completion_line: paired.completion.map(|(line, _)| line),
    })
}

/// The register model: the state after applying `op` to `state`, or `None`
/// if `op` is illegal in `state` (a read must return the current value).
fn step(state: RegState, op: &RegOp) -> Option<RegState> {
    match op.f {
        OpF::Write => Some(op.value),
        OpF::Read => (op.value == state).then_some(state),
        OpF::Add | OpF::StaleRead => None,
    }
}

// ---------------------------------------------------------------------------
// Per-key check
// ---------------------------------------------------------------------------

/// Verdict for one key plus the configurations visited.
struct KeyResult {
    outcome: Outcome,
    states: u64,
}

/// Checks one key: a cheap impossible-read scan first (clear message, no
/// search), then the WGL search.
fn check_key(key: &str, history: &KeyHistory, max_states: u64) -> KeyResult {
    if let Some(msg) = impossible_read(key, history) {
        return KeyResult {
            outcome: Outcome::NotLinearizable(msg),
            states: 0,
        };
    }
    let mut search = Wgl::new(&history.ops);
    let outcome = match search.run(max_states) {
        SearchResult::Linearizable => Outcome::Linearizable,
        SearchResult::Violation(stuck) => Outcome::NotLinearizable(describe_violation(
            key,
            &history.ops,
            &search.events,
            &stuck,
        )),
        SearchResult::Exhausted => Outcome::Unknown(format!(
            "key {key:?}: search gave up after exploring {} states (max_states = {max_states}) \
             over {} ops; raise max_states or check a shorter history",
            search.states,
            history.ops.len()
        )),
        SearchResult::Internal => Outcome::Unknown(format!(
            "key {key:?}: internal checker error: event list ended with unresolved ops"
        )),
    };
    KeyResult {
        outcome,
        states: search.states,
    }
}

/// Finds the earliest-returning read of a value that no considered write
/// could have produced (values are unique per key, so no ordering can help).
fn impossible_read(key: &str, history: &KeyHistory) -> Option<String> {
    let written: HashSet<Option<i64>> = history
        .ops
        .iter()
        .filter(|op| op.f == OpF::Write)
        .map(|op| op.value)
        .collect();
    let read = history
        .ops
        .iter()
        .filter(|op| op.f == OpF::Read && op.value.is_some() && !written.contains(&op.value))
        .min_by_key(|op| (op.ret, op.invoke_line))?;
    let failed = read
        .value
        .is_some_and(|v| history.failed_writes.contains(&v));
    let why = if failed {
        "was only written by a write that definitely failed"
    } else {
        "was never written"
    };
    Some(format!(
        "key {key:?}: not linearizable: {} returned a value that {why}",
        describe_op(read)
    ))
}

/// Explains the furthest point the search reached.
fn describe_violation(key: &str, ops: &[RegOp], events: &Events, stuck: &Stuck) -> String {
    const SHOWN: usize = 8;
    let pending: Vec<&RegOp> = (0..ops.len())
        .filter(|&i| i != stuck.op && !stuck.linearized.get(i))
        .filter(|&i| events.call_entry[i] < stuck.ret_entry)
        .map(|i| &ops[i])
        .collect();
    let mut msg = format!(
        "key {key:?}: not linearizable: no order of the ops justifies the {}. In the longest \
         partial linearization found ({} of {} ops linearized, all ops that returned earlier \
         included) the register held {} and ",
        describe_op(&ops[stuck.op]),
        stuck.linearized.count(),
        ops.len(),
        fmt_value(stuck.state),
    );
    if pending.is_empty() {
        msg.push_str("no other op was pending.");
    } else {
        let listed: Vec<String> = pending
            .iter()
            .take(SHOWN)
            .map(|op| describe_op(op))
            .collect();
        msg.push_str(&format!(
            "the ops still pending were: {}",
            listed.join("; ")
        ));
        if pending.len() > SHOWN {
            msg.push_str(&format!("; ... and {} more", pending.len() - SHOWN));
        }
        msg.push('.');
    }
    msg
}

/// One op, with the 1-based history (JSONL) lines to find it by.
fn describe_op(op: &RegOp) -> String {
    let what = match op.f {
        OpF::Read => "read",
        OpF::Write => "write",
        OpF::Add => "add",
        OpF::StaleRead => "stale read",
    };
    let kind = format!("{:?}", op.kind).to_lowercase();
    let end = match (op.ret, op.completion_line) {
        (Some(t), Some(line)) => format!("returned {kind} at {t} ns, line {}", line + 1),
        (Some(t), None) => format!("returned at {t} ns"),
        (None, Some(line)) => format!("completed {kind} (unknown outcome), line {}", line + 1),
        (None, None) => "never completed".to_string(),
    };
    format!(
        "{what} of {} by process {} (invoked at {} ns, line {}; {end})",
        fmt_value(op.value),
        op.process,
        op.call,
        op.invoke_line + 1
    )
}

/// Register values as a human reads them; `nil` is the initial state.
fn fmt_value(value: Option<i64>) -> String {
    value.map_or_else(|| "nil".to_string(), |v| v.to_string())
}

// ---------------------------------------------------------------------------
// WGL search
// ---------------------------------------------------------------------------

/// Fixed-size set of op indexes; hashable so it can key the memo cache.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(bits: usize) -> Self {
        Bitset(vec![0; bits.div_ceil(64)])
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }

    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
}

/// Sentinel entry before the first event.
const HEAD: usize = 0;

/// Call and return events of one key in time order, as an index-based
/// doubly linked list ("dancing links"): lifting a linearized op unlinks its
/// two entries in O(1) while they keep their own `prev`/`next`, so undoing in
/// reverse (stack) order relinks them in O(1).
///
/// Entry 0 is the head sentinel and the last entry the tail sentinel; event
/// entries lie in between, and an entry's index is its position in time
/// order, which is what "furthest" means when reporting a violation.
struct Events {
    /// Op index of each entry (`usize::MAX` for sentinels).
    op: Vec<usize>,
    is_call: Vec<bool>,
    prev: Vec<usize>,
    next: Vec<usize>,
    /// Entry of each op's call.
    call_entry: Vec<usize>,
    /// Entry of each op's return.
    ret_entry: Vec<usize>,
}

/// Sort key of an event: (+infinity?, time, history line). Unique per event,
/// and an op's call always sorts before its return (its invoke line is
/// smaller and its return time is clamped to at least its call time).
type EventKey = (bool, u64, usize);

impl Events {
    fn new(ops: &[RegOp]) -> Self {
        let mut events: Vec<(EventKey, usize, bool)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            events.push(((false, op.call, op.invoke_line), i, true));
            let ret_key = match op.ret {
                Some(t) => (false, t, op.completion_line.unwrap_or(op.invoke_line)),
                None => (true, 0, op.invoke_line),
            };
            events.push((ret_key, i, false));
        }
        events.sort_unstable_by_key(|event| event.0);
        Self::link(ops.len(), &events)
    }

    /// Builds the list from sorted events, framed by the two sentinels.
    fn link(op_count: usize, sorted: &[(EventKey, usize, bool)]) -> Self {
        let len = sorted.len() + 2;
        let mut list = Events {
            op: vec![usize::MAX; len],
            is_call: vec![false; len],
            prev: (0..len).map(|i| i.saturating_sub(1)).collect(),
            next: (0..len).map(|i| (i + 1).min(len - 1)).collect(),
            call_entry: vec![0; op_count],
            ret_entry: vec![0; op_count],
        };
        for (pos, &(_, op, is_call)) in sorted.iter().enumerate() {
            let entry = pos + 1;
            list.op[entry] = op;
            list.is_call[entry] = is_call;
            if is_call {
                list.call_entry[op] = entry;
            } else {
                list.ret_entry[op] = entry;
            }
        }
        list
    }

    fn tail(&self) -> usize {
        self.op.len() - 1
    }

    fn first(&self) -> usize {
        self.next[HEAD]
    }

    fn unlink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = entry;
        self.prev[next] = entry;
    }

    /// Removes a call entry and its op's return entry.
    fn lift(&mut self, call: usize) {
        let ret = self.ret_entry[self.op[call]];
        self.unlink(call);
        self.unlink(ret);
    }

    /// Undoes [`Events::lift`]; must be called in reverse lift order.
    fn unlift(&mut self, call: usize) {
        let ret = self.ret_entry[self.op[call]];
        self.relink(ret);
        self.relink(call);
    }
}

/// Where the search stood when it met a return it could not get past.
#[derive(Clone, Debug)]
struct Stuck {
    /// The blocking return entry: the earliest return not yet linearized.
    ret_entry: usize,
    op: usize,
    state: RegState,
    linearized: Bitset,
}

enum SearchResult {
    Linearizable,
    /// The furthest point reached (the one with the latest blocking return).
    Violation(Stuck),
    /// More than `max_states` configurations.
    Exhausted,
    /// An invariant broke; reported as `Unknown`, never as a verdict.
    Internal,
}

/// State of one WGL search (Lowe's formulation, as in Porcupine/Knossos).
///
/// Walk the event list from the front. At a call, try to linearize that op
/// now: if the model allows it and the resulting (linearized set, state)
/// configuration is new, push it, lift the op out of the list and restart
/// from the front. At a return, the op that returns there has not been
/// linearized yet, so the current prefix cannot be extended past it:
/// backtrack by popping the last linearized op and trying the next call after
/// it. An empty stack at a return means no linearization exists.
struct Wgl<'a> {
    ops: &'a [RegOp],
    events: Events,
    state: RegState,
    linearized: Bitset,
    /// Configurations already visited; revisiting one cannot succeed where
    /// the first visit failed, so it is pruned.
    cache: HashSet<(Bitset, RegState)>,
    /// (call entry, state before it) of each linearized op, in order.
    stack: Vec<(usize, RegState)>,
    /// Ops with a finite return not yet linearized. When it reaches zero
    /// the rest are unknown-outcome writes, which can always be linearized
    /// at the end (i.e. as never observed), so the search succeeds.
    unresolved: usize,
    states: u64,
    furthest: Option<Stuck>,
}

impl<'a> Wgl<'a> {
    fn new(ops: &'a [RegOp]) -> Self {
        Wgl {
            ops,
            events: Events::new(ops),
            state: None,
            linearized: Bitset::new(ops.len()),
            cache: HashSet::new(),
            stack: Vec::new(),
            unresolved: ops.iter().filter(|op| op.ret.is_some()).count(),
            states: 0,
            furthest: None,
        }
    }

    fn run(&mut self, max_states: u64) -> SearchResult {
        let mut entry = self.events.first();
        while self.unresolved > 0 {
            // Unreachable: an unresolved op's return entry is still listed
            // ahead of the tail and stops the walk.
            if entry == self.events.tail() {
                return SearchResult::Internal;
            }
            if !self.events.is_call[entry] {
                self.note_stuck(entry);
                match self.backtrack() {
                    Some(call) => entry = self.events.next[call],
                    None => return self.violation(),
                }
            } else if self.try_linearize(entry) {
                if self.states > max_states {
                    return SearchResult::Exhausted;
                }
                entry = self.events.first();
            } else {
                entry = self.events.next[entry];
            }
        }
        SearchResult::Linearizable
    }

    /// Linearizes the op called at `entry` if legal and not already explored.
    fn try_linearize(&mut self, entry: usize) -> bool {
        let op = self.events.op[entry];
        let Some(next_state) = step(self.state, &self.ops[op]) else {
            return false;
        };
        self.linearized.set(op);
        if !self.cache.insert((self.linearized.clone(), next_state)) {
            self.linearized.clear(op);
            return false;
        }
        self.states += 1;
        self.stack.push((entry, self.state));
        self.state = next_state;
        if self.ops[op].ret.is_some() {
            self.unresolved -= 1;
        }
        self.events.lift(entry);
        true
    }

    /// Undoes the last linearization; returns its call entry.
    fn backtrack(&mut self) -> Option<usize> {
        let (entry, state) = self.stack.pop()?;
        let op = self.events.op[entry];
        self.linearized.clear(op);
        self.state = state;
        if self.ops[op].ret.is_some() {
            self.unresolved += 1;
        }
        self.events.unlift(entry);
        Some(entry)
    }

    /// Remembers the blocking return if it is later than any seen so far.
    fn note_stuck(&mut self, ret_entry: usize) {
        if self
            .furthest
            .as_ref()
            .is_none_or(|stuck| ret_entry > stuck.ret_entry)
        {
            self.furthest = Some(Stuck {
                ret_entry,
                op: self.events.op[ret_entry],
                state: self.state,
                linearized: self.linearized.clone(),
            });
        }
    }

    fn violation(&mut self) -> SearchResult {
        self.furthest
            .take()
            .map_or(SearchResult::Internal, SearchResult::Violation)
    }
}

// ---------------------------------------------------------------------------
// Set checker
// ---------------------------------------------------------------------------

/// Result of [`check_set`].
#[derive(Clone, Debug)]
pub struct SetReport {
    /// Distinct elements whose add was invoked (whatever the outcome).
    pub attempted: usize,
    /// Distinct elements with an `Ok` add.
    pub acknowledged: usize,
    /// Acknowledged but absent from the final read (sorted).
    pub lost: Vec<i64>,
    /// Present more than once in the final read (sorted).
    pub duplicated: Vec<i64>,
    /// Present but never attempted, or whose add definitely failed (sorted).
    pub unexpected: Vec<i64>,
    /// Info (or uncompleted) adds that turned out present.
    pub recovered_unknown: usize,
    /// True iff `lost`, `duplicated` and `unexpected` are all empty.
    pub valid: bool,
}

/// What the history says about one element, weakest first; if an element
/// was (wrongly) added more than once, the strongest outcome wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum AddStatus {
    Failed,
    Unknown,
    Acknowledged,
}

/// Set workload: `Add` ops (key ignored or all the same), and a final read
/// (every element present in the database, possibly with duplicates — it is
/// a multiset as read back). Lost = acknowledged (Ok) but absent; duplicated
/// = present more than once; unexpected = present but never attempted, or
/// whose add definitely Failed. Valid iff all three are empty.
///
/// An `Info` or uncompleted add may or may not be present; either is fine,
/// and those found present are counted in `recovered_unknown`.
pub fn check_set(history: &[Op], final_read: &[i64]) -> SetReport {
    let statuses = add_statuses(history);
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for &element in final_read {
        *counts.entry(element).or_default() += 1;
    }
    let status_of = |element: &i64| statuses.get(element).copied();
    let lost = sorted(statuses.iter().filter(|&(element, status)| {
        *status == AddStatus::Acknowledged && !counts.contains_key(element)
    }));
    let duplicated = sorted(counts.iter().filter(|&(_, &count)| count > 1));
    let unexpected = sorted(
        counts
            .iter()
            .filter(|&(element, _)| matches!(status_of(element), None | Some(AddStatus::Failed))),
    );
    let recovered_unknown = counts
        .keys()
        .filter(|element| status_of(element) == Some(AddStatus::Unknown))
        .count();
    let valid = lost.is_empty() && duplicated.is_empty() && unexpected.is_empty();
    SetReport {
        attempted: statuses.len(),
        acknowledged: statuses
            .values()
            .filter(|&&status| status == AddStatus::Acknowledged)
            .count(),
        lost,
        duplicated,
        unexpected,
        recovered_unknown,
        valid,
    }
}

/// Strongest known outcome of each element's add. Adds without a value
/// cannot name an element and are skipped.
fn add_statuses(history: &[Op]) -> HashMap<i64, AddStatus> {
    let mut statuses: HashMap<i64, AddStatus> = HashMap::new();
    for paired in pair_ops(history) {
        if paired.invoke.f != OpF::Add {
            continue;
        }
        let Some(element) = paired.written_value() else {
            continue;
        };
        let status = match paired.outcome() {
            OpKind::Ok => AddStatus::Acknowledged,
            OpKind::Fail => AddStatus::Failed,
            OpKind::Info | OpKind::Invoke => AddStatus::Unknown,
        };
        statuses
            .entry(element)
            .and_modify(|known| *known = (*known).max(status))
            .or_insert(status);
    }
    statuses
}

/// The keys of map entries, sorted.
fn sorted<'a, V: 'a>(entries: impl Iterator<Item = (&'a i64, V)>) -> Vec<i64> {
    let mut elements: Vec<i64> = entries.map(|(&element, _)| element).collect();
    elements.sort_unstable();
    elements
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: u64 = 1_000_000;

    fn op(process: u64, kind: OpKind, f: OpF, key: &str, value: Option<i64>, time_ns: u64) -> Op {
        Op {
            process,
            kind,
            f,
            key: key.to_string(),
            value,
            time_ns,
            node: None,
            error: None,
        }
    }

    /// A write invoked at `call` and completed with `kind` at `ret`.
    fn w(p: u64, key: &str, v: i64, call: u64, ret: u64, kind: OpKind) -> Vec<Op> {
        vec![
            op(p, OpKind::Invoke, OpF::Write, key, Some(v), call),
            op(p, kind, OpF::Write, key, Some(v), ret),
        ]
    }

    /// A write invoked at `call` that never completed.
    fn w_open(p: u64, key: &str, v: i64, call: u64) -> Vec<Op> {
        vec![op(p, OpKind::Invoke, OpF::Write, key, Some(v), call)]
    }

    /// A read invoked at `call` that returned `v` at `ret`.
    fn r(p: u64, key: &str, v: Option<i64>, call: u64, ret: u64) -> Vec<Op> {
        vec![
            op(p, OpKind::Invoke, OpF::Read, key, None, call),
            op(p, OpKind::Ok, OpF::Read, key, v, ret),
        ]
    }

    /// Concatenates op pairs and stable-sorts them by time into a history.
    fn hist(parts: Vec<Vec<Op>>) -> Vec<Op> {
        let mut ops: Vec<Op> = parts.into_iter().flatten().collect();
        ops.sort_by_key(|o| o.time_ns);
        ops
    }

    fn outcome(parts: Vec<Vec<Op>>) -> Outcome {
        check_register(&hist(parts), BUDGET).outcome
    }

    fn bad_message(parts: Vec<Vec<Op>>) -> String {
        match outcome(parts) {
            Outcome::NotLinearizable(msg) => msg,
            other => panic!("expected NotLinearizable, got {other:?}"),
        }
    }

    use OpKind::{Fail, Info, Ok as Done};

    #[test]
    fn empty_history_is_linearizable() {
        let report = check_register(&[], BUDGET);
        assert_eq!(report.outcome, Outcome::Linearizable);
        assert_eq!((report.keys, report.ops), (0, 0));
    }

    #[test]
    fn sequential_write_then_read_same_value() {
        let h = hist(vec![w(1, "x", 1, 0, 10, Done), r(2, "x", Some(1), 20, 30)]);
        let report = check_register(&h, BUDGET);
        assert_eq!(report.outcome, Outcome::Linearizable);
        assert_eq!((report.keys, report.ops), (1, 2));
    }

    #[test]
    fn read_of_value_never_written() {
        let msg = bad_message(vec![w(1, "x", 1, 0, 10, Done), r(2, "x", Some(7), 20, 30)]);
        assert!(
            msg.contains("\"x\"") && msg.contains("never written"),
            "{msg}"
        );
        assert!(msg.contains("read of 7 by process 2"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn stale_read_after_newer_write_completed() {
        let msg = bad_message(vec![
            w(1, "x", 1, 0, 10, Done),
            w(1, "x", 2, 20, 30, Done),
            r(3, "x", Some(1), 40, 50),
        ]);
        assert!(msg.contains("read of 1 by process 3"), "{msg}");
        assert!(msg.contains("invoked at 40 ns"), "{msg}");
        assert!(msg.contains("returned ok at 50 ns"), "{msg}");
    }

    #[test]
    fn concurrent_read_may_see_old_or_new_value() {
        for seen in [1, 2] {
            let got = outcome(vec![
                w(1, "x", 1, 0, 10, Done),
                w(1, "x", 2, 20, 60, Done),
                r(2, "x", Some(seen), 30, 40),
            ]);
            assert_eq!(got, Outcome::Linearizable, "read saw {seen}");
        }
    }

    #[test]
    fn read_nil_before_any_write_completes() {
        let got = outcome(vec![
            r(3, "x", None, 0, 5),
            w(1, "x", 1, 10, 50, Done),
            r(2, "x", None, 20, 30),
        ]);
        assert_eq!(got, Outcome::Linearizable);
    }

    #[test]
    fn read_nil_after_write_completed() {
        let msg = bad_message(vec![w(1, "x", 1, 0, 10, Done), r(2, "x", None, 20, 30)]);
        assert!(msg.contains("read of nil"), "{msg}");
        assert!(msg.contains("register held 1"), "{msg}");
    }

    #[test]
    fn info_write_that_later_shows_up() {
        let completed = outcome(vec![
            w(1, "x", 1, 0, 10, Info),
            r(2, "x", Some(1), 100, 110),
        ]);
        assert_eq!(completed, Outcome::Linearizable);
        // Never completed at all: same as Info, and may take effect late.
        let open = outcome(vec![
            w_open(1, "x", 1, 0),
            r(2, "x", None, 100, 110),
            r(2, "x", Some(1), 200, 210),
        ]);
        assert_eq!(open, Outcome::Linearizable);
    }

    #[test]
    fn info_write_that_never_shows_up() {
        let got = outcome(vec![
            w(1, "x", 1, 0, 10, Info),
            r(2, "x", None, 100, 110),
            w(2, "x", 2, 120, 130, Done),
            r(2, "x", Some(2), 140, 150),
        ]);
        assert_eq!(got, Outcome::Linearizable);
    }

    #[test]
    fn info_write_cannot_be_seen_then_unseen() {
        let msg = bad_message(vec![
            w(1, "x", 1, 0, 10, Info),
            r(2, "x", Some(1), 100, 110),
            r(2, "x", None, 120, 130),
        ]);
        assert!(msg.contains("read of nil"), "{msg}");
    }

    #[test]
    fn failed_write_read_later() {
        let msg = bad_message(vec![w(1, "x", 1, 0, 10, Fail), r(2, "x", Some(1), 20, 30)]);
        assert!(msg.contains("definitely failed"), "{msg}");
        // Failed ops are not considered at all.
        let h = hist(vec![w(1, "x", 1, 0, 10, Fail), r(2, "x", None, 20, 30)]);
        let report = check_register(&h, BUDGET);
        assert_eq!((report.outcome, report.ops), (Outcome::Linearizable, 1));
    }

    #[test]
    fn reads_without_ok_are_ignored() {
        let h = hist(vec![
            w(1, "x", 1, 0, 10, Done),
            vec![
                op(2, OpKind::Invoke, OpF::Read, "x", None, 20),
                op(2, Info, OpF::Read, "x", Some(99), 30),
                op(3, OpKind::Invoke, OpF::Read, "x", None, 40),
            ],
        ]);
        let report = check_register(&h, BUDGET);
        assert_eq!((report.outcome, report.ops), (Outcome::Linearizable, 1));
    }

    #[test]
    fn new_then_old_across_sequential_reads() {
        // w1 done; w2 concurrent with both reads; r2 starts after r1 returned.
        let msg = bad_message(vec![
            w(1, "x", 1, 0, 10, Done),
            w(1, "x", 2, 20, 100, Done),
            r(2, "x", Some(2), 30, 40),
            r(3, "x", Some(1), 50, 60),
        ]);
        assert!(msg.contains("read of 1 by process 3"), "{msg}");
        assert!(msg.contains("register held 2"), "{msg}");
        assert!(msg.contains("3 of 4 ops"), "{msg}");
    }

    #[test]
    fn new_then_old_across_overlapping_reads_is_fine() {
        // r2 lies inside r1, so r2 can be linearized before w2 and r1 after.
        let got = outcome(vec![
            w(1, "x", 1, 0, 10, Done),
            w(1, "x", 2, 20, 100, Done),
            r(2, "x", Some(2), 30, 60),
            r(3, "x", Some(1), 40, 50),
        ]);
        assert_eq!(got, Outcome::Linearizable);
    }

    #[test]
    fn equal_timestamps_follow_recorded_order() {
        let write = |kind| op(1, kind, OpF::Write, "x", Some(1), 0);
        let mut done = write(Done);
        done.time_ns = 10;
        let read_inv = op(2, OpKind::Invoke, OpF::Read, "x", None, 10);
        let read_ok = op(2, Done, OpF::Read, "x", None, 20);
        // Completion recorded before the read's invoke: the write precedes
        // the read, so reading nil is a violation.
        let before = vec![
            write(OpKind::Invoke),
            done.clone(),
            read_inv.clone(),
            read_ok.clone(),
        ];
        assert!(matches!(
            check_register(&before, BUDGET).outcome,
            Outcome::NotLinearizable(_)
        ));
        // Read invoked (recorded) before the write completed: concurrent.
        let overlap = vec![write(OpKind::Invoke), read_inv, done, read_ok];
        assert_eq!(
            check_register(&overlap, BUDGET).outcome,
            Outcome::Linearizable
        );
    }

    #[test]
    fn keys_are_independent_and_bad_key_is_named() {
        let h = hist(vec![
            w(1, "alpha", 1, 0, 10, Done),
            r(2, "alpha", Some(1), 20, 30),
            w(1, "beta", 5, 0, 10, Done),
            w(1, "beta", 6, 20, 30, Done),
            r(3, "beta", Some(5), 40, 50),
            // Interleaved keys don't constrain each other.
            r(4, "gamma", None, 0, 100),
            w(5, "gamma", 9, 10, 20, Done),
        ]);
        let report = check_register(&h, BUDGET);
        assert_eq!((report.keys, report.ops), (3, 7));
        match report.outcome {
            Outcome::NotLinearizable(msg) => {
                assert!(msg.contains("\"beta\""), "{msg}");
                assert!(!msg.contains("alpha") && !msg.contains("gamma"), "{msg}");
            }
            other => panic!("expected NotLinearizable, got {other:?}"),
        }
        let good: Vec<Op> = h.into_iter().filter(|o| o.key != "beta").collect();
        assert_eq!(check_register(&good, BUDGET).outcome, Outcome::Linearizable);
    }

    /// Many concurrent unknown writes, then reads seeing a, b, a: impossible
    /// (unique values), but proving it means trying every subset and order.
    fn pathological(writers: u64) -> Vec<Op> {
        let mut parts: Vec<Vec<Op>> = (1..=writers).map(|p| w_open(p, "x", p as i64, p)).collect();
        parts.push(r(100, "x", Some(1), 1000, 1010));
        parts.push(r(100, "x", Some(2), 1020, 1030));
        parts.push(r(100, "x", Some(1), 1040, 1050));
        hist(parts)
    }

    #[test]
    fn pathological_search_is_bounded() {
        let report = check_register(&pathological(24), 5_000);
        match &report.outcome {
            Outcome::Unknown(msg) => {
                assert!(msg.contains("\"x\"") && msg.contains("5000"), "{msg}")
            }
            other => panic!("expected Unknown, got {other:?}"),
        }
        assert_eq!(report.states_explored, 5_001);
        // A small instance is decided within budget.
        let small = check_register(&pathological(4), BUDGET);
        assert!(matches!(small.outcome, Outcome::NotLinearizable(_)));
    }

    /// Deterministic splitmix64, to avoid a dependency.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) % n
        }
    }

    /// One simulated op: real window [call, ret] and, if it took effect, the
    /// instant `lin` inside that window at which the atomic register applied it.
    struct Planned {
        process: u64,
        f: OpF,
        value: Option<i64>,
        call: u64,
        ret: u64,
        lin: Option<u64>,
        kind: OpKind,
    }

    /// Plans `per_process` sequential ops per process with random timing.
    /// Times are scaled by 8 and offset by the process id so no two events of
    /// different processes share a timestamp.
    fn plan(rng: &mut Rng, processes: u64, per_process: u64) -> Vec<Planned> {
        let mut planned = Vec::new();
        for p in 0..processes {
            let scale = |t: u64| t * 8 + p;
            let mut clock = rng.below(20);
            for i in 0..per_process {
                let (call, ret) = (clock, clock + 1 + rng.below(60));
                let lin = call + rng.below(ret - call + 1);
                let is_write = rng.below(2) == 0;
                let roll = rng.below(100);
                let (kind, happened) = match (is_write, roll) {
                    (true, 0..=3) => (Info, rng.below(2) == 0),
                    (true, 4..=7) => (Fail, false),
                    (false, 0..=2) => (Info, true),
                    _ => (Done, true),
                };
                planned.push(Planned {
                    process: p,
                    f: if is_write { OpF::Write } else { OpF::Read },
                    value: is_write.then_some((p * 1000 + i) as i64),
                    call: scale(call),
                    ret: scale(ret),
                    lin: happened.then_some(scale(lin)),
                    kind,
                });
                clock = ret + 1 + rng.below(10);
            }
        }
        planned
    }

    /// Applies ops to an atomic register in linearization-point order,
    /// filling in what each read returned.
    fn simulate(planned: &mut [Planned]) {
        let mut order: Vec<usize> = (0..planned.len())
            .filter(|&i| planned[i].lin.is_some())
            .collect();
        order.sort_by_key(|&i| planned[i].lin);
        let mut register = None;
        for i in order {
            match planned[i].f {
                OpF::Write => register = planned[i].value,
                _ => planned[i].value = register,
            }
        }
    }

    fn to_history(planned: &[Planned]) -> Vec<Op> {
        let parts = planned.iter().map(|pl| {
            let is_read = pl.f == OpF::Read;
            let invoke_value = if is_read { None } else { pl.value };
            let done_value = if is_read && pl.kind != Done {
                None
            } else {
                pl.value
            };
            vec![
                op(pl.process, OpKind::Invoke, pl.f, "k", invoke_value, pl.call),
                op(pl.process, pl.kind, pl.f, "k", done_value, pl.ret),
            ]
        });
        hist(parts.collect())
    }

    /// The latest read forced after two sequential Ok writes (so the search
    /// has to get deep into the history), with the older write's value:
    /// (read index, stale value).
    fn stale_candidate(planned: &[Planned]) -> Option<(usize, i64)> {
        let ok_writes: Vec<&Planned> = planned
            .iter()
            .filter(|p| p.f == OpF::Write && p.kind == Done)
            .collect();
        planned.iter().enumerate().rev().find_map(|(i, read)| {
            if read.f != OpF::Read || read.kind != Done {
                return None;
            }
            ok_writes.iter().find_map(|newer| {
                let old = ok_writes
                    .iter()
                    .find(|old| newer.ret < read.call && old.ret < newer.call)?;
                let stale = old.value?;
                (read.value != Some(stale)).then_some((i, stale))
            })
        })
    }

    fn set_read_value(history: &mut [Op], read: &Planned, value: i64) {
        let entry = history
            .iter_mut()
            .find(|o| o.process == read.process && o.time_ns == read.ret)
            .expect("read completion is in the history");
        entry.value = Some(value);
    }

    #[test]
    fn randomized_atomic_register_histories() {
        for seed in 0..3 {
            let mut rng = Rng(seed);
            let mut planned = plan(&mut rng, 5, 40);
            simulate(&mut planned);
            let history = to_history(&planned);
            let report = check_register(&history, BUDGET);
            assert_eq!(report.outcome, Outcome::Linearizable, "seed {seed}");
            assert!(report.ops > 150, "seed {seed}: {}", report.ops);

            let some_read = planned
                .iter()
                .position(|p| p.f == OpF::Read && p.kind == Done)
                .expect("some Ok read");
            let mut corrupt = history.clone();
            set_read_value(&mut corrupt, &planned[some_read], -1);
            let got = check_register(&corrupt, BUDGET).outcome;
            assert!(
                matches!(got, Outcome::NotLinearizable(_)),
                "seed {seed}: {got:?}"
            );

            let (read, stale) = stale_candidate(&planned).expect("a stale-read candidate");
            let mut corrupt = history;
            set_read_value(&mut corrupt, &planned[read], stale);
            match check_register(&corrupt, BUDGET).outcome {
                Outcome::NotLinearizable(msg) => assert!(msg.contains("\"k\""), "{msg}"),
                other => panic!("seed {seed}: stale read accepted: {other:?}"),
            }
        }
    }

    // ---- set checker ----

    fn add(p: u64, v: i64, call: u64, kind: Option<OpKind>) -> Vec<Op> {
        let mut ops = vec![op(p, OpKind::Invoke, OpF::Add, "s", Some(v), call)];
        ops.extend(kind.map(|k| op(p, k, OpF::Add, "s", Some(v), call + 5)));
        ops
    }

    #[test]
    fn set_all_present_is_valid() {
        let h = hist(vec![add(1, 1, 0, Some(Done)), add(2, 2, 1, Some(Done))]);
        let report = check_set(&h, &[2, 1]);
        assert!(report.valid);
        assert_eq!((report.attempted, report.acknowledged), (2, 2));
    }

    #[test]
    fn set_lost_element() {
        let h = hist(vec![add(1, 1, 0, Some(Done)), add(2, 2, 1, Some(Done))]);
        let report = check_set(&h, &[1]);
        assert!(!report.valid);
        assert_eq!(report.lost, vec![2]);
        assert!(report.duplicated.is_empty() && report.unexpected.is_empty());
    }

    #[test]
    fn set_duplicated_element() {
        let h = hist(vec![add(1, 1, 0, Some(Done))]);
        let report = check_set(&h, &[1, 1, 1]);
        assert!(!report.valid);
        assert_eq!(report.duplicated, vec![1]);
        assert!(report.lost.is_empty());
    }

    #[test]
    fn set_unexpected_elements() {
        let h = hist(vec![add(1, 3, 0, Some(Fail)), add(1, 4, 10, Some(Done))]);
        let report = check_set(&h, &[99, 4, 3]);
        assert!(!report.valid);
        assert_eq!(report.unexpected, vec![3, 99]);
        assert_eq!((report.attempted, report.acknowledged), (2, 1));
    }

    #[test]
    fn set_unknown_adds_may_or_may_not_be_present() {
        let h = hist(vec![
            add(1, 4, 0, Some(Info)),
            add(2, 5, 1, None),
            add(3, 6, 2, Some(Info)),
        ]);
        let report = check_set(&h, &[4, 5]);
        assert!(report.valid, "{report:?}");
        assert_eq!(report.recovered_unknown, 2);
        assert_eq!((report.attempted, report.acknowledged), (3, 0));
    }

    /// A stale read invoked at `call` on `node` that returned `v` at `ret`.
    fn sr(p: u64, node: u64, key: &str, v: Option<i64>, call: u64, ret: u64) -> Vec<Op> {
        let mut ops = vec![
            op(p, OpKind::Invoke, OpF::StaleRead, key, None, call),
            op(p, OpKind::Ok, OpF::StaleRead, key, v, ret),
        ];
        for o in &mut ops {
            o.node = Some(node);
        }
        ops
    }

    #[test]
    fn stale_reads_within_the_bound_pass() {
        // v=1 acked at 20, v=2 acked at 120; bound 50.
        let h = hist(vec![
            w(1, "k", 1, 10, 20, OpKind::Ok),
            w(1, "k", 2, 100, 120, OpKind::Ok),
            // Before v=2 was acked: nothing or v=1 are both fine at 60 (horizon 10).
            sr(2, 1, "k", None, 60, 61),
            // At 150 the horizon is 100: v=1 is still allowed (v=2 acked after it).
            sr(2, 1, "k", Some(1), 150, 151),
            // At 200 the horizon is 150: v=2 must be seen.
            sr(2, 1, "k", Some(2), 200, 201),
        ]);
        let (n, bad) = check_staleness(&h, 50);
        assert_eq!(n, 3);
        assert!(bad.is_empty(), "{bad:?}");
    }

    #[test]
    fn a_stale_read_older_than_the_bound_is_caught() {
        let h = hist(vec![
            w(1, "k", 1, 10, 20, OpKind::Ok),
            w(1, "k", 2, 100, 120, OpKind::Ok),
            sr(2, 1, "k", Some(1), 200, 201),
        ]);
        let (_, bad) = check_staleness(&h, 50);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(bad[0].contains("overwritten by v=2"), "{bad:?}");
        let h = hist(vec![
            w(1, "k", 1, 10, 20, OpKind::Ok),
            sr(2, 1, "k", None, 200, 201),
        ]);
        assert_eq!(check_staleness(&h, 50).1.len(), 1);
        // A write that overlapped v=1's never makes v=1 stale.
        let h = hist(vec![
            w(1, "k", 1, 10, 30, OpKind::Ok),
            w(3, "k", 2, 15, 20, OpKind::Ok),
            sr(2, 1, "k", Some(1), 200, 201),
        ]);
        assert!(check_staleness(&h, 50).1.is_empty());
    }

    #[test]
    fn stale_reads_going_backwards_or_inventing_values_are_caught() {
        let h = hist(vec![
            w(1, "k", 1, 10, 20, OpKind::Ok),
            w(1, "k", 2, 30, 40, OpKind::Ok),
            sr(2, 1, "k", Some(2), 50, 51),
            sr(2, 1, "k", Some(1), 52, 53),
        ]);
        let (_, bad) = check_staleness(&h, 1_000);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(bad[0].contains("went backwards"), "{bad:?}");
        // On another node the older value is allowed (another replica may lag).
        let h = hist(vec![
            w(1, "k", 1, 10, 20, OpKind::Ok),
            w(1, "k", 2, 30, 40, OpKind::Ok),
            sr(2, 1, "k", Some(2), 50, 51),
            sr(2, 2, "k", Some(1), 52, 53),
        ]);
        assert!(check_staleness(&h, 1_000).1.is_empty());
        let h = hist(vec![sr(2, 1, "k", Some(9), 50, 51)]);
        assert!(check_staleness(&h, 1_000).1[0].contains("no client wrote"));
    }
}
