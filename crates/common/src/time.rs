//! Time helpers. Shoal stores time as signed nanoseconds since the Unix epoch (UTC).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub const NANOS_PER_DAY: i64 = 86_400 * 1_000_000_000;

/// Added to the system clock by [`now_nanos`]; zero unless a test skews this process.
static SKEW_NS: AtomicI64 = AtomicI64::new(0);

/// Shifts this process's wall clock by `skew_ns` (the fault harness' clock-skew nemesis,
/// through `SHOAL_TEST_CLOCK_SKEW_MS`): every wall-clock reading Shoal takes goes through
/// [`now_nanos`], so the node behaves as on a host whose clock is off by that much.
pub fn set_skew_for_tests(skew_ns: i64) {
    SKEW_NS.store(skew_ns, Ordering::Relaxed);
}

/// Current wall-clock time in nanoseconds since the epoch.
pub fn now_nanos() -> i64 {
    let raw = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    };
    raw.saturating_add(SKEW_NS.load(Ordering::Relaxed))
}

/// The UTC day (days since the epoch, floor) that contains `ts_nanos`.
pub fn day_of(ts_nanos: i64) -> i64 {
    ts_nanos.div_euclid(NANOS_PER_DAY)
}

/// Parses a duration like `500ms`, `5s`, `2m`, `1h`, `250us`, `10ns`.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().ok()?;
    let nanos_per = match unit.trim() {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    };
    Some(std::time::Duration::from_nanos(n.checked_mul(nanos_per)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_floor_before_epoch() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(NANOS_PER_DAY - 1), 0);
        assert_eq!(day_of(-1), -1);
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("5s"),
            Some(std::time::Duration::from_secs(5))
        );
        assert_eq!(
            parse_duration("500ms"),
            Some(std::time::Duration::from_millis(500))
        );
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("x5s"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
    }
}
