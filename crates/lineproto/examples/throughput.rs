//! Prints how many lines per second the parser handles on one core.
//!
//! ```text
//! cargo run --release -p shoal-lineproto --example throughput [-- LINES]
//! ```
//!
//! Measures both APIs: `next_into` with one reused `Line` (the write path's loop) and the
//! allocating `Iterator`. Nothing is asserted; the numbers are for humans.

use std::hint::black_box;
use std::time::Instant;

use shoal_lineproto::{parse_lines, FieldValue, Line};

const DEFAULT_LINES: usize = 1_000_000;
const ROUNDS: usize = 5;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_LINES);
    let input = build_input(n);
    println!(
        "{n} lines, {:.1} MiB, best of {ROUNDS} rounds",
        input.len() as f64 / (1024.0 * 1024.0)
    );

    let best_into = best_of(|| {
        let mut lines = parse_lines(&input);
        let mut line = Line::default();
        let mut sum = 0.0;
        let mut count = 0usize;
        while let Some(r) = lines.next_into(&mut line) {
            if r.is_err() {
                panic!("generated input must parse");
            }
            if let Some((_, FieldValue::Float(p))) = line.fields.first() {
                sum += p;
            }
            count += 1;
        }
        black_box(sum);
        count
    });
    report("next_into (reused Line)", n, best_into, input.len());

    let best_iter = best_of(|| {
        let mut count = 0usize;
        for line in parse_lines(&input) {
            black_box(line.is_ok());
            count += 1;
        }
        count
    });
    report("Iterator (Line per entry)", n, best_iter, input.len());
}

/// Lines like `trades,side=B,symbol=SYM0001 price=381.83,size=121i 1704233339305051858`.
fn build_input(n: usize) -> Vec<u8> {
    let mut input = Vec::with_capacity(n * 80);
    let mut ts: i64 = 1_704_233_339_305_051_858;
    for i in 0..n {
        let side = if i % 2 == 0 { 'B' } else { 'S' };
        let price = 100.0 + (i % 50_000) as f64 / 100.0;
        let line = format!(
            "trades,side={side},symbol=SYM{:04} price={price:.2},size={}i {ts}\n",
            i % 10_000,
            1 + i % 500
        );
        input.extend_from_slice(line.as_bytes());
        ts += 1_337;
    }
    input
}

fn best_of(mut run: impl FnMut() -> usize) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        black_box(run());
        best = best.min(start.elapsed().as_secs_f64());
    }
    best
}

fn report(what: &str, n: usize, secs: f64, bytes: usize) {
    println!(
        "{what:28} {:>6.2} M lines/s  {:>7.1} MiB/s  ({:.1} ns/line)",
        n as f64 / secs / 1e6,
        bytes as f64 / secs / (1024.0 * 1024.0),
        secs * 1e9 / n as f64
    );
}
