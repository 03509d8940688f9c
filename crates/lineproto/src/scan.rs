//! Byte classes of the grammar and the search for the next byte of a class.
//!
//! One table lookup per byte. (An eight-bytes-at-a-time SWAR search was measured and was
//! slower: tokens are short, and the per-byte branch predicts well on real batches.)

/// Byte ends a measurement name (a backslash stops the scan to look at the escape).
pub(crate) const MEAS_END: u8 = 1;
/// Byte ends a tag key or field key.
pub(crate) const KEY_END: u8 = 2;
/// Byte ends a tag value.
pub(crate) const TAG_VALUE_END: u8 = 4;
/// Byte ends an unquoted field value.
pub(crate) const VALUE_END: u8 = 8;
/// Byte needs a look inside a quoted string: the closing quote, an escape or a newline.
pub(crate) const STR_STOP: u8 = 16;
/// Byte is a control character (0x00-0x1F, 0x7F): not allowed in a comment.
pub(crate) const CONTROL: u8 = 32;

/// Class bits of every byte value.
pub(crate) static CLASS: [u8; 256] = build_classes();

const fn build_classes() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        let control = c < 0x20 || c == 0x7f;
        let mut f = 0;
        if control || c == b',' || c == b' ' || c == b'\\' {
            f |= MEAS_END;
        }
        if control || c == b',' || c == b'=' || c == b' ' || c == b'\\' {
            f |= KEY_END;
        }
        if c == b',' || c == b'=' || c == b' ' || c == b'\r' || c == b'\n' || c == b'\\' {
            f |= TAG_VALUE_END;
        }
        if c == b',' || c == b' ' || c == b'\r' || c == b'\n' {
            f |= VALUE_END;
        }
        if c == b'"' || c == b'\\' || c == b'\n' {
            f |= STR_STOP;
        }
        if control {
            f |= CONTROL;
        }
        table[i] = f;
        i += 1;
    }
    table
}

/// Offset of the first byte at or after `from` whose class includes `CLASS_BIT`, or
/// `buf.len()` if there is none.
#[inline]
pub(crate) fn find<const CLASS_BIT: u8>(buf: &[u8], from: usize) -> usize {
    let mut i = from;
    while i < buf.len() && CLASS[usize::from(buf[i])] & CLASS_BIT == 0 {
        i += 1;
    }
    i.min(buf.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_hold_the_grammar_delimiters() {
        let has = |c: u8, class: u8| CLASS[usize::from(c)] & class != 0;
        for c in [b',', b' ', b'\\', b'\t', 0x7f] {
            assert!(has(c, MEAS_END) && has(c, KEY_END), "{c:#x}");
        }
        assert!(has(b'=', KEY_END) && !has(b'=', MEAS_END));
        // Tag values end at CR/LF but may hold other control characters.
        assert!(has(b'\n', TAG_VALUE_END) && !has(b'\t', TAG_VALUE_END));
        assert!(has(b'\r', VALUE_END) && !has(b'=', VALUE_END) && !has(b'\\', VALUE_END));
        assert!(has(b'"', STR_STOP) && has(b'\n', STR_STOP) && !has(b',', STR_STOP));
        assert!(has(b'\t', CONTROL) && !has(0x80, CONTROL) && !has(b' ', CONTROL));
        for (c, class) in CLASS.iter().enumerate().skip(0x80) {
            assert_eq!(*class, 0, "non-ASCII byte {c:#x} must be plain text");
        }
    }

    #[test]
    fn find_stops_at_the_first_member_or_the_end() {
        assert_eq!(find::<KEY_END>(b"abc=d", 0), 3);
        assert_eq!(find::<KEY_END>(b"abc=d", 4), 5);
        assert_eq!(find::<VALUE_END>(b"1.5", 0), 3);
        assert_eq!(find::<STR_STOP>(b"ab\"c", 0), 2);
        assert_eq!(find::<KEY_END>(b"", 0), 0);
        assert_eq!(find::<KEY_END>(b"ab", 7), 2);
    }
}
