//! Packet delay and reordering between nodes, without the kernel's `netem` qdisc (this
//! machine's kernel has no `sch_netem`).
//!
//! Node i's packets to its peers go through an NFQUEUE (`iptables -A OUTPUT … -j NFQUEUE
//! --queue-bypass`); a thread of the harness, moved into node i's network namespace, holds
//! each packet for `delay` plus a random share of `jitter` before accepting it. A jitter
//! larger than the gap between packets reorders them. Duplication needs no queue: the
//! `TEE` target clones a share of the packets to the same peer (see `Net::duplicate`).
//!
//! Bounded: at most [`MAX_HELD`] packets are held at once (more are passed on at once), the
//! kernel queue holds at most [`QUEUE_MAX_LEN`] and fails open past it, and when the delayer
//! stops every held packet is released.

use std::collections::BinaryHeap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::rng::Rng;

/// Packets held back at once; beyond it new ones pass undelayed.
pub const MAX_HELD: usize = 20_000;
/// The kernel-side queue length (fail-open beyond it).
pub const QUEUE_MAX_LEN: u32 = 20_000;

/// A running delayer; stops (releasing everything it holds) when dropped.
pub struct Delayer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

struct Held {
    due: Instant,
    seq: u64,
    msg: nfq::Message,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    // A min-heap on (due, seq) through BinaryHeap's max-heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

impl Delayer {
    /// Starts delaying the packets of queue `queue` in namespace `ns` by `delay` plus a
    /// uniformly random share of `jitter`. Returns once the queue is bound (or failed to).
    pub fn start(
        ns: &str,
        queue: u16,
        delay: Duration,
        jitter: Duration,
        seed: u64,
    ) -> Result<Delayer, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let path = format!("/var/run/netns/{ns}");
        let flag = stop.clone();
        let thread = std::thread::spawn(move || -> Result<(), String> {
            let bound = (|| -> Result<nfq::Queue, String> {
                let f = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("setns {path}: {e}"))?;
                let mut q = nfq::Queue::open().map_err(|e| format!("nfqueue: {e}"))?;
                q.bind(queue)
                    .map_err(|e| format!("nfqueue bind {queue}: {e}"))?;
                q.set_copy_range(queue, 64)
                    .map_err(|e| format!("nfqueue copy range: {e}"))?;
                q.set_queue_max_len(queue, QUEUE_MAX_LEN)
                    .map_err(|e| format!("nfqueue max len: {e}"))?;
                q.set_fail_open(queue, true)
                    .map_err(|e| format!("nfqueue fail open: {e}"))?;
                let _ = q.set_recv_enobufs(false);
                q.set_nonblocking(true);
                Ok(q)
            })();
            let mut q = match bound {
                Ok(q) => {
                    let _ = ready_tx.send(Ok(()));
                    q
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.clone()));
                    return Err(e);
                }
            };
            let mut rng = Rng::new(seed);
            let jitter_us = jitter.as_micros() as u64;
            let mut held: BinaryHeap<Held> = BinaryHeap::new();
            let mut seq = 0u64;
            let release = |q: &mut nfq::Queue, mut msg: nfq::Message| {
                msg.set_verdict(nfq::Verdict::Accept);
                let _ = q.verdict(msg);
            };
            while !flag.load(Ordering::Relaxed) {
                let mut got = false;
                // Take what has arrived (bounded per round so releases stay on time).
                for _ in 0..256 {
                    match q.recv() {
                        Ok(msg) if held.len() < MAX_HELD => {
                            let extra = if jitter_us == 0 {
                                0
                            } else {
                                rng.below(jitter_us + 1)
                            };
                            seq += 1;
                            held.push(Held {
                                due: Instant::now() + delay + Duration::from_micros(extra),
                                seq,
                                msg,
                            });
                            got = true;
                        }
                        Ok(msg) => release(&mut q, msg),
                        Err(_) => break,
                    }
                }
                let now = Instant::now();
                while held.peek().is_some_and(|h| h.due <= now) {
                    if let Some(h) = held.pop() {
                        release(&mut q, h.msg);
                    }
                }
                if !got {
                    let wait = held
                        .peek()
                        .map_or(Duration::from_millis(1), |h| {
                            h.due.saturating_duration_since(now)
                        })
                        .min(Duration::from_millis(1));
                    std::thread::sleep(wait);
                }
            }
            while let Some(h) = held.pop() {
                release(&mut q, h.msg);
            }
            let _ = q.unbind(queue);
            Ok(())
        });
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(Delayer {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                Err("the delay thread did not start".into())
            }
        }
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
