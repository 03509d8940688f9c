//! Property: the parser never panics and keeps its invariants on arbitrary bytes.
//!
//! A seeded xorshift generator drives random inputs (biased toward line-protocol
//! syntax) and mutations of the corpus inputs, so CI exercises roughly what the
//! cargo-fuzz target (`fuzz/`) does, without nightly. A failure prints the seed and the
//! input; rerun with `LINEPROTO_FUZZ_SEED=<seed>`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use base64::Engine as _;
use shoal_lineproto::{parse_lines, Line};

const RANDOM_INPUTS: usize = 200_000;
const MUTATIONS_PER_CORPUS_INPUT: usize = 8;
const MAX_RANDOM_LEN_BYTES: usize = 96;
const DEFAULT_SEED: u64 = 0x5eed_1e55_c0ff_ee01;

/// The public corpus in the steering repository's `shared/`, beside the clone.
fn corpus_path() -> std::path::PathBuf {
    shoal_common::fuzz::repo_root().join("../shared/conformance/line-protocol/corpus.json")
}

/// Bytes that matter to the grammar, drawn more often than the rest.
const ALPHABET: &[u8] = b" ,=\"\\\n\r#\ttTfFiue.-+0123456789aZ_x\x01\x7f\xc3\xa9\xff";

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        if self.below(4) == 0 {
            self.next() as u8
        } else {
            ALPHABET[self.below(ALPHABET.len())]
        }
    }
}

fn seed() -> u64 {
    std::env::var("LINEPROTO_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

/// Parses `input` with both APIs and checks what must hold for any input.
fn check(input: &[u8]) -> Result<(), String> {
    let newlines = input.iter().filter(|&&c| c == b'\n').count();
    let mut via_iter = Vec::new();
    for result in parse_lines(input) {
        match &result {
            Ok(line) => {
                if line.measurement.is_empty() || line.fields.is_empty() {
                    return Err(format!(
                        "accepted an entry without name or fields: {line:?}"
                    ));
                }
                if line.tags.iter().any(|(k, v)| k.is_empty() || v.is_empty()) {
                    return Err(format!("accepted an empty tag key or value: {line:?}"));
                }
            }
            Err(e) => {
                if e.line == 0 || e.column == 0 || e.line > newlines + 1 {
                    return Err(format!("error located outside the input: {e}"));
                }
                if e.column > input.len() + 1 {
                    return Err(format!("column past the input: {e}"));
                }
            }
        }
        if via_iter.len() > input.len() {
            return Err("more entries than input bytes".to_owned());
        }
        via_iter.push(result);
    }
    let mut lines = parse_lines(input);
    let mut line = Line::default();
    let mut via_into = Vec::new();
    while let Some(r) = lines.next_into(&mut line) {
        via_into.push(r.map(|()| line.clone()));
        if via_into.len() > via_iter.len() {
            break;
        }
    }
    if via_iter != via_into {
        return Err("Iterator::next and next_into disagree".to_owned());
    }
    Ok(())
}

/// Runs `check` and turns a panic into an error naming the input.
fn check_reporting(input: &[u8], seed: u64, what: &str) {
    let outcome = catch_unwind(AssertUnwindSafe(|| check(input)));
    let problem = match outcome {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e,
        Err(_) => "panicked".to_owned(),
    };
    panic!(
        "parser property violated ({problem}) on {what} {:?} (bytes {:x?}); \
         reproduce with LINEPROTO_FUZZ_SEED={seed}",
        String::from_utf8_lossy(input),
        input
    );
}

#[test]
fn random_bytes_never_panic() {
    let seed = seed();
    let mut rng = XorShift(seed);
    let mut buf = Vec::with_capacity(MAX_RANDOM_LEN_BYTES);
    for _ in 0..RANDOM_INPUTS {
        buf.clear();
        let len = rng.below(MAX_RANDOM_LEN_BYTES + 1);
        // Start most inputs with a plausible prefix so the later sections get exercised.
        if rng.below(2) == 0 {
            buf.extend_from_slice(b"m,t=v f=");
        }
        while buf.len() < len {
            buf.push(rng.byte());
        }
        check_reporting(&buf, seed, "random input");
    }
}

#[test]
fn corpus_mutations_never_panic() {
    let text = match std::fs::read_to_string(corpus_path()) {
        Ok(t) => t,
        Err(e) => {
            println!(
                "SKIPPED: corpus not readable at {}: {e}",
                corpus_path().display()
            );
            return;
        }
    };
    let corpus: serde_json::Value = serde_json::from_str(&text).expect("corpus is JSON");
    let cases = corpus["decode"].as_object().expect("decode cases");
    let seed = seed();
    let mut rng = XorShift(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut checked = 0usize;
    for case in cases.values() {
        let input = match &case["input"]["text"] {
            serde_json::Value::String(s) => s.as_bytes().to_vec(),
            other => other["binary"]
                .as_str()
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .unwrap_or_default(),
        };
        check_reporting(&input, seed, "corpus input");
        for _ in 0..MUTATIONS_PER_CORPUS_INPUT {
            let mutated = mutate(&mut rng, &input);
            check_reporting(&mutated, seed, "mutated corpus input");
            checked += 1;
        }
    }
    println!("checked {checked} mutated corpus inputs (seed {seed})");
}

/// One to four random edits: overwrite, insert, delete, duplicate a slice, or truncate.
fn mutate(rng: &mut XorShift, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(5) {
            0 if at < out.len() => out[at] = rng.byte(),
            1 => out.insert(at, rng.byte()),
            2 if at < out.len() => {
                out.remove(at);
            }
            3 if at < out.len() => {
                let end = (at + 1 + rng.below(8)).min(out.len());
                let piece = out[at..end].to_vec();
                out.splice(at..at, piece);
            }
            _ => out.truncate(at),
        }
    }
    out
}
