//! Fuzz target: any bytes through both parser APIs. Checks that nothing panics, that
//! accepted entries have a name and fields, that errors point inside the input, and that
//! the iterator and `next_into` agree.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_lineproto::{parse_lines, Line};

fuzz_target!(|data: &[u8]| {
    let newlines = data.iter().filter(|&&c| c == b'\n').count();
    let via_iter: Vec<_> = parse_lines(data).collect();
    for result in &via_iter {
        match result {
            Ok(line) => {
                assert!(!line.measurement.is_empty(), "empty measurement accepted");
                assert!(!line.fields.is_empty(), "entry without fields accepted");
            }
            Err(e) => {
                assert!(e.line >= 1 && e.line <= newlines + 1, "bad error line: {e}");
                assert!(
                    e.column >= 1 && e.column <= data.len() + 1,
                    "bad column: {e}"
                );
            }
        }
    }
    let mut lines = parse_lines(data);
    let mut line = Line::default();
    let mut via_into = Vec::new();
    while let Some(result) = lines.next_into(&mut line) {
        via_into.push(result.map(|()| line.clone()));
    }
    assert_eq!(via_iter, via_into, "Iterator and next_into disagree");
});
