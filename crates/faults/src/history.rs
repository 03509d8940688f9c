//! Operation histories: what client tasks did, and when.
//!
//! A history is a flat list of [`Op`]s in the order they were recorded. Each
//! client *process* has at most one outstanding operation: an
//! [`OpKind::Invoke`] followed by exactly one completion ([`OpKind::Ok`],
//! [`OpKind::Fail`] or [`OpKind::Info`]) carrying the same process id. An
//! invoke that never completes counts as `Info` (its effect is unknown).
//!
//! Histories are persisted as JSON Lines (one op per line) so that a human can
//! grep them and so that a checker can be rerun offline; the checker reports
//! positions as 1-based line numbers in that file.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// What an entry in the history records.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// The client is about to send the request.
    Invoke,
    /// The operation definitely happened (and, for reads, returned `value`).
    Ok,
    /// The operation definitely did not happen.
    Fail,
    /// Unknown: the operation may have happened, at any time after its invoke.
    Info,
}

/// The operation being performed.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OpF {
    /// Write `value` to a register.
    Write,
    /// Read a register.
    Read,
    /// Add a unique element to a set.
    Add,
    /// Read a register at `bounded_staleness` (checked by `check::check_staleness`).
    #[serde(rename = "stale_read")]
    StaleRead,
}

/// One history entry: an invocation or a completion.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Op {
    /// Logical client id; at most one outstanding op per process.
    pub process: u64,
    /// Invocation or which kind of completion.
    pub kind: OpKind,
    /// Operation type.
    pub f: OpF,
    /// Register (or set) the op acts on.
    pub key: String,
    /// Written value (writes, adds) or read value (Ok read completions);
    /// `None` for read invokes and for reads of a never-written register.
    pub value: Option<i64>,
    /// Nanoseconds since the recorder was created.
    pub time_ns: u64,
    /// Database node the client talked to, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    /// Error text for failed or indeterminate completions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// State behind the recorder's lock.
#[derive(Debug, Default)]
struct Inner {
    ops: Vec<Op>,
    /// Node of each process's outstanding invoke, copied onto its completion
    /// so both lines of an op can be attributed to a node when grepping.
    pending_nodes: HashMap<u64, Option<u64>>,
}

/// Thread-safe, append-only history recorder shared by client tasks
/// (wrap it in an `Arc`).
///
/// Timestamps are taken *while holding the lock* that appends the op, so
/// `time_ns` never decreases along the recorded order, and the recorded order
/// of two entries with equal timestamps is the order in which they really
/// happened. The checker relies on this to break timestamp ties.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    inner: Mutex<Inner>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Recorder {
            start: Instant::now(),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Locks the history. A poisoned lock is recovered rather than
    /// propagated: the guarded code only pushes to a `Vec` and a `HashMap`,
    /// so a panic elsewhere in a client task cannot leave it half-updated,
    /// and losing the whole history to one panicking client would be worse.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Monotonic nanoseconds since creation (saturates after ~584 years).
    pub fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records an invocation and returns its timestamp.
    pub fn invoke(
        &self,
        process: u64,
        f: OpF,
        key: &str,
        value: Option<i64>,
        node: Option<u64>,
    ) -> u64 {
        let mut inner = self.lock();
        let time_ns = self.elapsed_ns();
        inner.pending_nodes.insert(process, node);
        inner.ops.push(Op {
            process,
            kind: OpKind::Invoke,
            f,
            key: key.to_string(),
            value,
            time_ns,
            node,
            error: None,
        });
        time_ns
    }

    /// Records the completion of `process`'s outstanding op. The node of the
    /// matching invoke (if any) is copied onto the completion.
    pub fn complete(
        &self,
        process: u64,
        kind: OpKind,
        f: OpF,
        key: &str,
        value: Option<i64>,
        error: Option<String>,
    ) {
        let mut inner = self.lock();
        let time_ns = self.elapsed_ns();
        let node = inner.pending_nodes.remove(&process).flatten();
        inner.ops.push(Op {
            process,
            kind,
            f,
            key: key.to_string(),
            value,
            time_ns,
            node,
            error,
        });
    }

    /// A snapshot of everything recorded so far, in recorded order.
    pub fn ops(&self) -> Vec<Op> {
        self.lock().ops.clone()
    }

    /// Number of entries recorded so far.
    pub fn len(&self) -> usize {
        self.lock().ops.len()
    }

    /// True if nothing has been recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes `ops` as JSON Lines (one op per line), replacing `path`.
pub fn write_jsonl(path: &Path, ops: &[Op]) -> io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    for op in ops {
        serde_json::to_writer(&mut out, op)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads a JSON Lines history. Blank lines are skipped; a malformed line is
/// an `InvalidData` error naming the file and 1-based line number.
pub fn read_jsonl(path: &Path) -> io::Result<Vec<Op>> {
    let reader = BufReader::new(File::open(path)?);
    let mut ops = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line).map_err(|err| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}:{}: {err}", path.display(), index + 1),
            )
        })?;
        ops.push(op);
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::Arc;

    /// A per-test file in the temp dir, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(tag: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let name = format!("faults-check-{tag}-{}-{nanos}.jsonl", std::process::id());
            TempFile(std::env::temp_dir().join(name))
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn recorder_times_are_monotonic_and_nodes_copied() {
        let rec = Recorder::new();
        assert!(rec.is_empty());
        let t0 = rec.invoke(1, OpF::Write, "x", Some(5), Some(2));
        rec.complete(1, OpKind::Ok, OpF::Write, "x", Some(5), None);
        rec.invoke(1, OpF::Read, "x", None, None);
        rec.complete(
            1,
            OpKind::Info,
            OpF::Read,
            "x",
            None,
            Some("timeout".into()),
        );
        let ops = rec.ops();
        assert_eq!(ops.len(), 4);
        assert_eq!(ops[0].time_ns, t0);
        assert!(ops.windows(2).all(|w| w[0].time_ns <= w[1].time_ns));
        assert_eq!(ops[1].node, Some(2), "completion inherits invoke's node");
        assert_eq!(ops[3].node, None);
        assert_eq!(ops[3].error.as_deref(), Some("timeout"));
        assert!(rec.elapsed_ns() >= ops[3].time_ns);
    }

    #[test]
    fn recorder_is_shareable_across_threads() {
        let rec = Arc::new(Recorder::new());
        std::thread::scope(|s| {
            for p in 0..4u64 {
                let rec = Arc::clone(&rec);
                s.spawn(move || {
                    for i in 0..50 {
                        let v = Some((p * 1000 + i) as i64);
                        rec.invoke(p, OpF::Write, "k", v, None);
                        rec.complete(p, OpKind::Ok, OpF::Write, "k", v, None);
                    }
                });
            }
        });
        let ops = rec.ops();
        assert_eq!(ops.len(), 400);
        assert!(ops.windows(2).all(|w| w[0].time_ns <= w[1].time_ns));
    }

    #[test]
    fn jsonl_round_trip() {
        let file = TempFile::new("roundtrip");
        let ops = vec![
            Op {
                process: 3,
                kind: OpKind::Invoke,
                f: OpF::Add,
                key: "s".into(),
                value: Some(-7),
                time_ns: 10,
                node: Some(1),
                error: None,
            },
            Op {
                process: 3,
                kind: OpKind::Fail,
                f: OpF::Add,
                key: "s".into(),
                value: Some(-7),
                time_ns: 20,
                node: None,
                error: Some("conflict \"quoted\"\nnewline".into()),
            },
        ];
        write_jsonl(&file.0, &ops).expect("write");
        let text = std::fs::read_to_string(&file.0).expect("read text");
        assert_eq!(text.lines().count(), 2);
        assert!(text.contains(r#""kind":"invoke""#));
        assert!(text.contains(r#""f":"add""#));
        assert!(!text.lines().nth(1).unwrap_or("").contains("node"));
        assert_eq!(read_jsonl(&file.0).expect("read back"), ops);
    }

    #[test]
    fn read_jsonl_accepts_missing_optionals_and_rejects_garbage() {
        let file = TempFile::new("garbage");
        let line = r#"{"process":1,"kind":"ok","f":"read","key":"x","value":null,"time_ns":5}"#;
        std::fs::write(&file.0, format!("{line}\n\n{{not json\n")).expect("write");
        let err = read_jsonl(&file.0).expect_err("line 3 is malformed");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains(":3:"), "{err}");

        std::fs::write(&file.0, format!("{line}\n")).expect("write");
        let ops = read_jsonl(&file.0).expect("valid");
        assert_eq!(ops[0].node, None);
        assert_eq!(ops[0].error, None);
        assert_eq!(ops[0].kind, OpKind::Ok);
    }
}
