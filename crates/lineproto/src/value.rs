//! Field values and the number parsers behind them.
//!
//! Integers are parsed by hand (digits only, checked against the i64/u64 range). Floats
//! take a fast exact path for plain decimals and fall back to the standard library, which
//! rounds correctly, for everything else.

use std::borrow::Cow;

/// A typed field value.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    Float(f64),
    Int(i64),
    UInt(u64),
    Str(Cow<'a, str>),
    Bool(bool),
}

impl FieldValue<'_> {
    /// The line-protocol name of the type: `float`, `integer`, `unsigned`, `string` or
    /// `boolean`.
    pub fn type_name(&self) -> &'static str {
        match self {
            FieldValue::Float(_) => "float",
            FieldValue::Int(_) => "integer",
            FieldValue::UInt(_) => "unsigned",
            FieldValue::Str(_) => "string",
            FieldValue::Bool(_) => "boolean",
        }
    }

    /// Copies a borrowed string so the value outlives the input buffer.
    pub fn into_owned(self) -> FieldValue<'static> {
        match self {
            FieldValue::Float(v) => FieldValue::Float(v),
            FieldValue::Int(v) => FieldValue::Int(v),
            FieldValue::UInt(v) => FieldValue::UInt(v),
            FieldValue::Str(s) => FieldValue::Str(Cow::Owned(s.into_owned())),
            FieldValue::Bool(v) => FieldValue::Bool(v),
        }
    }
}

/// Why a number did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NumError {
    Syntax,
    OutOfRange,
}

/// A numeric field value. Small enough (with its error) to come back in registers,
/// which keeps the parser's hot path free of stack round trips.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Number {
    Float(f64),
    Int(i64),
    UInt(u64),
}

impl From<Number> for FieldValue<'_> {
    fn from(n: Number) -> Self {
        match n {
            Number::Float(v) => FieldValue::Float(v),
            Number::Int(v) => FieldValue::Int(v),
            Number::UInt(v) => FieldValue::UInt(v),
        }
    }
}

/// Why a numeric field value did not parse, and which type it was meant to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NumberError {
    pub(crate) kind: NumError,
    pub(crate) type_name: NumberType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NumberType {
    Float,
    Int,
    UInt,
}

impl NumberError {
    /// A message naming the offending token.
    pub(crate) fn describe(self, tok: &[u8]) -> String {
        let tok = String::from_utf8_lossy(tok);
        let what = match self.type_name {
            NumberType::Float => "float",
            NumberType::Int => "integer",
            NumberType::UInt => "unsigned integer",
        };
        match (self.kind, self.type_name) {
            (NumError::Syntax, _) => format!("invalid {what} value {tok:?}"),
            (NumError::OutOfRange, NumberType::Float) => {
                format!("float value {tok:?} is not a finite number")
            }
            (NumError::OutOfRange, _) => format!("{what} value {tok:?} is out of range"),
        }
    }
}

/// Parses an unquoted, non-boolean field value (`1.5`, `-3i`, `7u`). The token starts
/// with `-`, `.` or a digit and holds no separator.
#[inline]
pub(crate) fn parse_number(tok: &[u8]) -> Result<Number, NumberError> {
    let err = |type_name| move |kind| NumberError { kind, type_name };
    match tok.split_last() {
        Some((b'i', digits)) => parse_i64(digits)
            .map(Number::Int)
            .map_err(err(NumberType::Int)),
        Some((b'u', digits)) => parse_u64(digits)
            .map(Number::UInt)
            .map_err(err(NumberType::UInt)),
        _ => parse_f64(tok)
            .map(Number::Float)
            .map_err(err(NumberType::Float)),
    }
}

/// `[-]digits` into an i64.
pub(crate) fn parse_i64(s: &[u8]) -> Result<i64, NumError> {
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    let magnitude = parse_u64(digits)?;
    if negative {
        if magnitude > i64::MIN.unsigned_abs() {
            return Err(NumError::OutOfRange);
        }
        // -(2^63) is representable although 2^63 is not, hence the wrapping negation.
        Ok((magnitude as i64).wrapping_neg())
    } else {
        i64::try_from(magnitude).map_err(|_| NumError::OutOfRange)
    }
}

/// `digits` into a u64. No sign is accepted.
pub(crate) fn parse_u64(digits: &[u8]) -> Result<u64, NumError> {
    if digits.is_empty() {
        return Err(NumError::Syntax);
    }
    // Up to 19 digits cannot overflow a u64 (10^19 - 1 < 2^64), so only longer input
    // takes the checked path. Eight digits at a time are converted with SWAR arithmetic.
    if digits.len() > 19 {
        return parse_u64_checked(digits);
    }
    let mut v: u64 = 0;
    let mut chunks = digits.chunks_exact(8);
    for chunk in &mut chunks {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(chunk);
        v = v * 100_000_000 + eight_digits(u64::from_le_bytes(eight))?;
    }
    for &c in chunks.remainder() {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return Err(NumError::Syntax);
        }
        v = v * 10 + u64::from(d);
    }
    Ok(v)
}

/// The common timestamp: `[-]` and 1 to 19 digits that fit an i64, followed by
/// something that cannot continue a timestamp. Returns the value and the bytes used, or
/// `None` to send the caller to the general path (which also reports errors).
#[inline]
pub(crate) fn parse_timestamp_prefix(bytes: &[u8]) -> Option<(i64, usize)> {
    const MAX_DIGITS: usize = 19;
    let negative = bytes.first() == Some(&b'-');
    let digits_start = usize::from(negative);
    let mut i = digits_start;
    let mut v: u64 = 0;
    // Two SWAR words cover 16 of the 19 digits of a nanosecond timestamp of this era.
    while i - digits_start + 8 <= MAX_DIGITS {
        let Some(word) = bytes
            .get(i..i + 8)
            .and_then(|chunk| <[u8; 8]>::try_from(chunk).ok())
        else {
            break;
        };
        match eight_digits(u64::from_le_bytes(word)) {
            Ok(x) => v = v * 100_000_000 + x,
            Err(_) => break,
        }
        i += 8;
    }
    while let Some(&c) = bytes.get(i) {
        if !c.is_ascii_digit() || i - digits_start == MAX_DIGITS {
            break;
        }
        v = v * 10 + u64::from(c - b'0');
        i += 1;
    }
    let continues = bytes
        .get(i)
        .is_some_and(|&c| c.is_ascii_digit() || c == b'-');
    if i == digits_start || continues {
        return None;
    }
    let ts = if negative {
        if v > i64::MIN.unsigned_abs() {
            return None;
        }
        (v as i64).wrapping_neg()
    } else {
        i64::try_from(v).ok()?
    };
    Some((ts, i))
}

/// The value of eight ASCII digits loaded little-endian (first digit in the low byte).
#[inline]
fn eight_digits(word: u64) -> Result<u64, NumError> {
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    const HIGH_NIBBLES: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    // Every byte is 0x30..=0x39: high nibble 3, and adding 6 does not carry into it.
    let all_digits = word & HIGH_NIBBLES == ZEROS
        && word.wrapping_add(0x0606_0606_0606_0606) & HIGH_NIBBLES == ZEROS;
    if !all_digits {
        return Err(NumError::Syntax);
    }
    let mut v = word - ZEROS;
    v = (v * 10 + (v >> 8)) & 0x00FF_00FF_00FF_00FF;
    v = (v * 100 + (v >> 16)) & 0x0000_FFFF_0000_FFFF;
    v = (v * 10_000 + (v >> 32)) & 0x0000_0000_FFFF_FFFF;
    Ok(v)
}

/// Digit by digit with overflow checks, for inputs too long for the fast path.
fn parse_u64_checked(digits: &[u8]) -> Result<u64, NumError> {
    let mut v: u64 = 0;
    for &c in digits {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return Err(NumError::Syntax);
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d)))
            .ok_or(NumError::OutOfRange)?;
    }
    Ok(v)
}

/// A float in decimal notation. Rejects non-finite results.
pub(crate) fn parse_f64(tok: &[u8]) -> Result<f64, NumError> {
    if let Some(v) = fast_decimal(tok) {
        return Ok(v);
    }
    // The standard parser also takes `inf`, `nan` and a leading `+`; the token never starts
    // with a letter or `+`, so only `-inf`/`-nan` forms get through, and those are not
    // finite. Hexadecimal floats and `_` separators are not accepted by it, which is what
    // InfluxDB 2.x does too.
    let s = std::str::from_utf8(tok).map_err(|_| NumError::Syntax)?;
    let v: f64 = s.parse().map_err(|_| NumError::Syntax)?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(NumError::OutOfRange)
    }
}

/// Exact powers of ten that an f64 represents without rounding.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// `[-]digits[.digits]` with at most 15 significant digits: the mantissa and the power
/// of ten are both exact in an f64, so one correctly rounded division gives the correctly
/// rounded result (Clinger's fast path). `None` sends the token to the general parser.
fn fast_decimal(tok: &[u8]) -> Option<f64> {
    let (negative, body) = match tok.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, tok),
    };
    let mut mantissa: u64 = 0;
    let mut digits = 0usize;
    let mut frac_digits = 0usize;
    let mut seen_dot = false;
    for &c in body {
        let d = c.wrapping_sub(b'0');
        if d <= 9 {
            mantissa = mantissa * 10 + u64::from(d);
            digits += 1;
            frac_digits += usize::from(seen_dot);
            if digits > 15 {
                return None;
            }
        } else if c == b'.' && !seen_dot {
            seen_dot = true;
        } else {
            return None;
        }
    }
    if digits == 0 {
        return None;
    }
    // frac_digits <= digits <= 15, so the index is in bounds.
    let v = mantissa as f64 / POW10[frac_digits];
    Some(if negative { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_at_the_edges() {
        assert_eq!(parse_i64(b"9223372036854775807"), Ok(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), Err(NumError::OutOfRange));
        assert_eq!(
            parse_i64(b"-9223372036854775809"),
            Err(NumError::OutOfRange)
        );
        assert_eq!(parse_i64(b"-0"), Ok(0));
        assert_eq!(parse_i64(b"007"), Ok(7));
        for bad in [
            &b""[..],
            b"-",
            b"--1",
            b"+1",
            b"1.0",
            b"1e3",
            b" 1",
            b"0x10",
        ] {
            assert_eq!(parse_i64(bad), Err(NumError::Syntax), "{bad:?}");
        }
        assert_eq!(parse_u64(b"18446744073709551615"), Ok(u64::MAX));
        assert_eq!(
            parse_u64(b"18446744073709551616"),
            Err(NumError::OutOfRange)
        );
        assert_eq!(parse_u64(b"-0"), Err(NumError::Syntax));
        assert_eq!(parse_u64(b"-1"), Err(NumError::Syntax));
    }

    #[test]
    fn timestamp_prefix_fast_path() {
        let ok = |s: &str| parse_timestamp_prefix(s.as_bytes());
        assert_eq!(ok("1704233339305051858\n"), Some((1704233339305051858, 19)));
        assert_eq!(ok("9223372036854775807"), Some((i64::MAX, 19)));
        assert_eq!(ok("-9223372036854775808 "), Some((i64::MIN, 20)));
        assert_eq!(ok("0"), Some((0, 1)));
        assert_eq!(ok("-0\r\n"), Some((0, 2)));
        assert_eq!(ok("12345678x"), Some((12345678, 8)));
        assert_eq!(ok("1234567890123456"), Some((1234567890123456, 16)));
        // Everything else goes to the general path.
        for s in [
            "",
            "-",
            "x",
            "9223372036854775808",
            "-9223372036854775809",
            "12345678901234567890",
            "1-2",
            "--1",
            "1234567890-",
        ] {
            assert_eq!(ok(s), None, "{s}");
        }
    }

    #[test]
    fn floats_fast_and_slow_paths_agree_with_std() {
        for s in [
            "0",
            "-0",
            "1",
            "1.",
            ".5",
            "-.5",
            "381.83",
            "0.1",
            "123456789012345",
            "1234567890123456789",
            "0.000000000000000000001",
            "1e4",
            "1.0E-4",
            "6.632243e+06",
            "-1.7976931348623157e308",
            "4.9e-324",
            "1e-400",
            "00.5",
        ] {
            let want: f64 = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            let got = parse_f64(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e:?}"));
            assert_eq!(got.to_bits(), want.to_bits(), "{s}");
        }
    }

    #[test]
    fn floats_rejected() {
        for s in [
            "-", ".", "-.", "1e", "1e+", "1..2", "1.2.3", "0x1p3", "1_000", "-inf",
        ] {
            assert!(parse_f64(s.as_bytes()).is_err(), "{s}");
        }
        assert_eq!(parse_f64(b"1e400"), Err(NumError::OutOfRange));
        assert_eq!(parse_f64(b"-infinity"), Err(NumError::OutOfRange));
        assert_eq!(parse_f64(b"-nan"), Err(NumError::OutOfRange));
    }

    #[test]
    fn typed_values() {
        assert_eq!(parse_number(b"121i"), Ok(Number::Int(121)));
        assert_eq!(parse_number(b"-121i"), Ok(Number::Int(-121)));
        assert_eq!(parse_number(b"121u"), Ok(Number::UInt(121)));
        assert_eq!(parse_number(b"1.5"), Ok(Number::Float(1.5)));
        assert_eq!(FieldValue::from(Number::UInt(3)), FieldValue::UInt(3));
        let e = parse_number(b"99999999999999999999i").err();
        assert_eq!(
            e.map(|e| e.describe(b"99999999999999999999i")),
            Some("integer value \"99999999999999999999i\" is out of range".to_owned())
        );
        assert!(parse_number(b"-1u").is_err());
        assert!(parse_number(b"1.5i").is_err());
        assert!(parse_number(b"9223372036854775808i").is_err());
        assert!(parse_number(b"1x").is_err());
        assert_eq!(FieldValue::Int(1).type_name(), "integer");
        assert_eq!(FieldValue::UInt(1).type_name(), "unsigned");
        assert_eq!(FieldValue::Float(1.0).type_name(), "float");
        assert_eq!(FieldValue::Bool(true).type_name(), "boolean");
        assert_eq!(FieldValue::Str("x".into()).type_name(), "string");
    }
}
