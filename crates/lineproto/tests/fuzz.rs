//! Fuzz target: the line-protocol parser never panics, whatever the bytes, and what it
//! accepts keeps its invariants (corpus in `fuzz/corpus/lineproto`; see
//! `shoal_common::fuzz` for the bounds).

#[test]
fn fuzz_line_protocol_parser() {
    shoal_common::fuzz::run("lineproto", vec![], |input| {
        for l in shoal_lineproto::parse_lines(input).flatten() {
            assert!(!l.fields.is_empty(), "a parsed line without fields");
            assert!(
                !l.measurement.is_empty(),
                "a parsed line without a measurement"
            );
        }
    });
}
