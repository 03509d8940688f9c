//! A small mutation fuzzer for parsers of untrusted bytes that runs as an ordinary test on
//! the stable toolchain (cargo-fuzz and cargo-bolero's engines need nightly or system
//! libraries; this needs nothing).
//!
//! [`run`] feeds the target every input of its checked-in corpus (`fuzz/corpus/<name>/`)
//! and the seeds the test passes, then mutated inputs — bit flips, random and
//! "interesting" bytes and integers, inserted, deleted and duplicated ranges, splices of
//! two inputs, truncation — for a bounded number of iterations and a bounded time. A panic
//! fails the test with the seed, the iteration and the input in hex, and the input is
//! written to `$TMPDIR/shoal-fuzz-crashes/<name>/`, to add to the corpus once fixed.
//!
//! Bounds: `SHOAL_FUZZ_ITERATIONS` (default [`DEFAULT_ITERATIONS`]) and
//! `SHOAL_FUZZ_SECONDS` (default [`DEFAULT_SECONDS`]) per target, inputs at most
//! [`MAX_INPUT_BYTES`]; `SHOAL_FUZZ_SEED` repeats a run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Mutated inputs per target unless `SHOAL_FUZZ_ITERATIONS` says otherwise.
pub const DEFAULT_ITERATIONS: u64 = 200_000;
/// Time per target unless `SHOAL_FUZZ_SECONDS` says otherwise.
pub const DEFAULT_SECONDS: u64 = 15;
/// The largest input tried.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;

/// xorshift64*: deterministic from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[&[u8]] = &[
    &[0],
    &[0xff],
    &[0x7f],
    &[0x80],
    &[0, 0, 0, 0],
    &[0xff, 0xff, 0xff, 0xff],
    &[0x7f, 0xff, 0xff, 0xff],
    &[0x80, 0, 0, 0],
    &[0, 0, 0, 8],
    &[0xff, 0xff],
    b"\n",
    b" ",
    b",",
    b"=",
    b"\"",
    b"\\",
    &[0xc3, 0x28],
];

fn mutate(rng: &mut Rng, input: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next() as u8;
            }
            2 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                v.drain(at..at + n);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                let copy = v[at..at + n].to_vec();
                let to = rng.below(len + 1);
                v.splice(to..to, copy);
            }
            5 => {
                let at = rng.below(len + 1);
                let pick = INTERESTING[rng.below(INTERESTING.len())];
                if at + pick.len() <= len && rng.below(2) == 0 {
                    v[at..at + pick.len()].copy_from_slice(pick);
                } else {
                    v.splice(at..at, pick.iter().copied());
                }
            }
            6 if !pool.is_empty() => {
                let other = &pool[rng.below(pool.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            7 if len > 0 => {
                v.truncate(rng.below(len));
            }
            _ => {
                let at = rng.below(len + 1);
                v.insert(at, rng.next() as u8);
            }
        }
    }
    v.truncate(MAX_INPUT_BYTES);
    v
}

fn env_u64(key: &str) -> Option<u64> {
    std::env::var(key).ok()?.trim().parse().ok()
}

/// The repository's root, for tests reading checked-in files. Taken from the
/// `CARGO_MANIFEST_DIR` that `cargo test` sets when it runs a test (every crate sits at
/// `<repo>/crates/<name>`), not the one compiled in: cargo reuses a test binary built from
/// identical sources in another checkout sharing the target directory, and the path
/// compiled into it may be gone (CI once ran a fuzz target against a deleted clone).
pub fn repo_root() -> PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    crate_dir.join("../..")
}

/// The checked-in corpus directory of target `name` (`<repo>/fuzz/corpus/<name>`).
pub fn corpus_dir(name: &str) -> PathBuf {
    repo_root().join("fuzz/corpus").join(name)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs target `name` over its corpus, `seeds`, then mutated inputs (see the module docs).
/// Panics, with a reproduction, when the target panics. Returns the inputs tried.
pub fn run(name: &str, seeds: Vec<Vec<u8>>, target: impl Fn(&[u8])) -> u64 {
    let mut pool = seeds;
    let dir = corpus_dir(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for f in &files {
        if let Ok(b) = std::fs::read(f) {
            pool.push(b);
        }
    }
    assert!(
        !pool.is_empty(),
        "fuzz target {name}: no corpus in {} and no seeds",
        dir.display()
    );
    let seed = env_u64("SHOAL_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    }) | 1;
    let iterations = env_u64("SHOAL_FUZZ_ITERATIONS").unwrap_or(DEFAULT_ITERATIONS);
    let limit = Duration::from_secs(env_u64("SHOAL_FUZZ_SECONDS").unwrap_or(DEFAULT_SECONDS));
    let mut rng = Rng(seed);
    let started = Instant::now();
    let try_one = |input: &[u8], i: u64| {
        if catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
            let crashes = std::env::temp_dir().join("shoal-fuzz-crashes").join(name);
            let _ = std::fs::create_dir_all(&crashes);
            let file = crashes.join(format!("seed{seed}-{i}"));
            let _ = std::fs::write(&file, input);
            panic!(
                "fuzz target {name} panicked (SHOAL_FUZZ_SEED={seed}, input {i}, saved to {}): {}",
                file.display(),
                hex(input)
            );
        }
    };
    let mut tried = 0;
    for (i, input) in pool.iter().enumerate() {
        try_one(input, i as u64);
        tried += 1;
    }
    while tried < iterations + pool.len() as u64 && started.elapsed() < limit {
        let base = &pool[rng.below(pool.len())];
        let input = mutate(&mut rng, base, &pool);
        try_one(&input, tried);
        tried += 1;
    }
    println!(
        "fuzz {name}: {tried} inputs ({} from the corpus and seeds) in {:.1} s, seed {seed}",
        pool.len(),
        started.elapsed().as_secs_f64()
    );
    tried
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_bounded_and_vary() {
        let mut rng = Rng(7);
        let pool = vec![b"cpu,host=a v=1 1".to_vec()];
        let outs: std::collections::BTreeSet<Vec<u8>> = (0..200)
            .map(|_| mutate(&mut rng, &pool[0], &pool))
            .collect();
        assert!(outs.len() > 150, "mutations repeat: {}", outs.len());
        assert!(outs.iter().all(|o| o.len() <= MAX_INPUT_BYTES));
    }

    #[test]
    #[should_panic(expected = "fuzz target selftest panicked")]
    fn a_panicking_target_fails_with_the_input() {
        run("selftest", vec![b"ab".to_vec()], |b| {
            if b.len() > 2 {
                panic!("found it")
            }
        });
    }
}
