//! Timestamp precision of a write request, and scaling of raw timestamps to nanoseconds.

/// The unit of the timestamps in a write request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    #[default]
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
    Minutes,
    Hours,
}

impl Precision {
    /// Accepts the InfluxDB v1 (`n`, `ns`, `u`, `us`, `µ`, `ms`, `s`, `m`, `h`) and v2
    /// (`ns`, `us`, `ms`, `s`) spellings, plus `µs` (micro sign or Greek mu); `None` for
    /// anything else.
    pub fn parse(s: &str) -> Option<Precision> {
        Some(match s {
            "n" | "ns" => Precision::Nanoseconds,
            "u" | "us" | "µ" | "µs" | "μ" | "μs" => Precision::Microseconds,
            "ms" => Precision::Milliseconds,
            "s" => Precision::Seconds,
            "m" => Precision::Minutes,
            "h" => Precision::Hours,
            _ => return None,
        })
    }

    /// Nanoseconds in one unit of this precision.
    pub const fn unit_nanos(self) -> i64 {
        match self {
            Precision::Nanoseconds => 1,
            Precision::Microseconds => 1_000,
            Precision::Milliseconds => 1_000_000,
            Precision::Seconds => 1_000_000_000,
            Precision::Minutes => 60_000_000_000,
            Precision::Hours => 3_600_000_000_000,
        }
    }

    /// Scales a raw timestamp to nanoseconds; `None` on overflow.
    pub fn to_nanos(self, ts: i64) -> Option<i64> {
        ts.checked_mul(self.unit_nanos())
    }

    /// Rounds a nanosecond time down to a whole unit of this precision (toward negative
    /// infinity), as a server does with its own clock for entries without a timestamp.
    /// The few times below the lowest representable whole unit round up instead.
    pub fn truncate_nanos(self, ns: i64) -> i64 {
        let unit = self.unit_nanos();
        let rem = ns.rem_euclid(unit);
        ns.checked_sub(rem).unwrap_or(ns + (unit - rem))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_and_v2_spellings() {
        for (s, p) in [
            ("n", Precision::Nanoseconds),
            ("ns", Precision::Nanoseconds),
            ("u", Precision::Microseconds),
            ("us", Precision::Microseconds),
            ("µ", Precision::Microseconds),
            ("µs", Precision::Microseconds),
            ("ms", Precision::Milliseconds),
            ("s", Precision::Seconds),
            ("m", Precision::Minutes),
            ("h", Precision::Hours),
        ] {
            assert_eq!(Precision::parse(s), Some(p), "{s}");
        }
        for bad in ["", "x", "NS", "sec", "1s", "mm"] {
            assert_eq!(Precision::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn scales_and_detects_overflow() {
        assert_eq!(Precision::Nanoseconds.to_nanos(i64::MIN), Some(i64::MIN));
        assert_eq!(Precision::Microseconds.to_nanos(5), Some(5_000));
        assert_eq!(Precision::Seconds.to_nanos(-2), Some(-2_000_000_000));
        assert_eq!(Precision::Hours.to_nanos(1), Some(3_600_000_000_000));
        assert_eq!(
            Precision::Seconds.to_nanos(i64::MAX / 1_000_000_000 + 1),
            None
        );
        assert_eq!(Precision::Milliseconds.to_nanos(i64::MIN), None);
    }

    #[test]
    fn truncates_toward_negative_infinity() {
        assert_eq!(Precision::Microseconds.truncate_nanos(1_999), 1_000);
        assert_eq!(Precision::Microseconds.truncate_nanos(-1), -1_000);
        assert_eq!(Precision::Nanoseconds.truncate_nanos(-7), -7);
        assert_eq!(
            Precision::Microseconds.truncate_nanos(i64::MIN),
            i64::MIN + 1_000 - 192
        );
    }
}
