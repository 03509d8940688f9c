//! How the process' heap is backed by the kernel.
//!
//! mimalloc asks for transparent huge pages (`MADV_HUGEPAGE`) on the memory it reserves, so
//! the first touch of any byte in a 2 MiB region makes the kernel zero all 2 MiB. The write
//! path allocates many short-lived buffers spread over fresh regions, and on the 2-core
//! benchmark machine `clear_page_erms` under `do_huge_pmd_anonymous_page` was 19–23 % of
//! the server's ingest profile. With huge pages off the kernel zeroes 4 KiB pages as they
//! are touched: 10 M rows ingested in about half the kernel time (2.2–2.6 s → 1.1–1.3 s),
//! 10 % more rows per second, a p99 batch latency of 17 ms instead of 26 ms, and no
//! change to query times (docs/benchmarks.md, 2026-12-06).

/// Allows (`true`) or forbids (`false`) transparent huge pages for this process and the
/// processes it starts (`PR_SET_THP_DISABLE`, checked by the kernel at every page fault, so
/// it applies to memory reserved before the call too). A kernel without the call leaves
/// the system's setting in force, which is only slower.
pub fn set_huge_pages(enabled: bool) {
    if let Err(e) = nix::sys::prctl::set_thp_disable(!enabled) {
        eprintln!("shoal: cannot set transparent huge pages to {enabled}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thp_enabled() -> Option<String> {
        std::fs::read_to_string("/proc/self/status")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:").map(|v| v.trim().to_string()))
    }

    /// The kernel reports the process flag in /proc/self/status (`THP_enabled`).
    #[test]
    fn the_flag_reaches_the_kernel() {
        if thp_enabled().is_none() {
            eprintln!("SKIP: this kernel does not report THP_enabled");
            return;
        }
        set_huge_pages(false);
        assert_eq!(thp_enabled().as_deref(), Some("0"));
        set_huge_pages(true);
        assert_eq!(thp_enabled().as_deref(), Some("1"));
    }
}
