//! Behaviour of the parser through its public API: escapes, value types, line handling
//! and error locations.

use std::borrow::Cow;

use shoal_lineproto::{parse_lines, FieldValue, Line, ParseError};

/// Parses input that must be valid, one entry expected per returned line.
fn ok(input: &str) -> Vec<Line<'_>> {
    parse_lines(input.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("{input:?}: {e}"))
}

/// The first (and only) entry of valid input.
fn one(input: &str) -> Line<'_> {
    let mut lines = ok(input);
    assert_eq!(lines.len(), 1, "{input:?}");
    lines.remove(0)
}

/// The first error of input that must be invalid.
fn err(input: &[u8]) -> ParseError {
    parse_lines(input)
        .find_map(Result::err)
        .unwrap_or_else(|| panic!("{:?} parsed", String::from_utf8_lossy(input)))
}

/// Whether a parsed part points into the input rather than owning a copy.
macro_rules! is_borrowed {
    ($cow:expr) => {
        matches!($cow, Cow::Borrowed(_))
    };
}

#[test]
fn parses_a_full_line_without_copying() {
    let l = one("trades,side=B,symbol=SYM0001 price=381.83,size=121i 1704233339305051858");
    assert_eq!(l.measurement, "trades");
    assert_eq!(
        l.tags,
        vec![
            (Cow::from("side"), Cow::from("B")),
            (Cow::from("symbol"), Cow::from("SYM0001"))
        ]
    );
    assert_eq!(
        l.fields,
        vec![
            (Cow::from("price"), FieldValue::Float(381.83)),
            (Cow::from("size"), FieldValue::Int(121)),
        ]
    );
    assert_eq!(l.timestamp, Some(1704233339305051858));
    assert!(is_borrowed!(l.measurement));
    assert!(l
        .tags
        .iter()
        .all(|(k, v)| is_borrowed!(k) && is_borrowed!(v)));
    assert!(l.fields.iter().all(|(k, _)| is_borrowed!(k)));
    assert_eq!(l.tag("symbol"), Some("SYM0001"));
    assert_eq!(l.tag("nope"), None);
}

#[test]
fn tags_keep_input_order_and_timestamp_is_optional() {
    let l = one("m,z=1,a=2 f=1");
    assert_eq!(l.tags[0].0, "z");
    assert_eq!(l.tags[1].0, "a");
    assert_eq!(l.timestamp, None);
}

#[test]
fn measurement_escapes() {
    let l = one(r"my\ meas\,x\=y f=1");
    assert_eq!(l.measurement, "my meas,x\\=y");
    assert!(matches!(l.measurement, Cow::Owned(_)));
    // `=` needs no escape in a measurement, and a backslash before it stays.
    assert_eq!(one("a=b f=1").measurement, "a=b");
}

#[test]
fn tag_and_field_key_escapes() {
    let l = one(r"m,k\ 1\,\==v\ 1\,\= f\ k\,\==1");
    assert_eq!(l.tags[0], (Cow::from("k 1,="), Cow::from("v 1,=")));
    assert_eq!(l.fields[0].0, "f k,=");
    assert!(!is_borrowed!(l.tags[0].0) && !is_borrowed!(l.tags[0].1));
}

#[test]
fn backslash_before_other_characters_is_literal() {
    let l = one(r#"m\x,t=a\b f\g=1,s="a\b\n""#);
    assert_eq!(l.measurement, r"m\x");
    assert_eq!(l.tags[0].1, r"a\b");
    assert_eq!(l.fields[0].0, r"f\g");
    assert_eq!(l.fields[1].1, FieldValue::Str(r"a\b\n".into()));
    assert!(is_borrowed!(l.measurement));
}

#[test]
fn string_escapes() {
    let l = one(r#"m s="say \"hi\" \\ back",e="",u="héllo""#);
    assert_eq!(l.fields[0].1, FieldValue::Str(r#"say "hi" \ back"#.into()));
    assert_eq!(l.fields[1].1, FieldValue::Str("".into()));
    assert_eq!(l.fields[2].1, FieldValue::Str("héllo".into()));
    assert!(matches!(&l.fields[2].1, FieldValue::Str(Cow::Borrowed(_))));
    // Commas, spaces and equals signs need no escape inside strings.
    let l = one(r#"m s="a, b=c d" 5"#);
    assert_eq!(l.fields[0].1, FieldValue::Str("a, b=c d".into()));
    assert_eq!(l.timestamp, Some(5));
}

#[test]
fn value_types() {
    let l = one("m a=1,b=-1.5,c=.5,d=1.,e=1e3,f=1E-3,g=6.632243e+06,h=-0,i=7i,j=-7i,k=7u,l=0u");
    let want = [
        FieldValue::Float(1.0),
        FieldValue::Float(-1.5),
        FieldValue::Float(0.5),
        FieldValue::Float(1.0),
        FieldValue::Float(1000.0),
        FieldValue::Float(0.001),
        FieldValue::Float(6632243.0),
        FieldValue::Float(0.0),
        FieldValue::Int(7),
        FieldValue::Int(-7),
        FieldValue::UInt(7),
        FieldValue::UInt(0),
    ];
    let got: Vec<_> = l.fields.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(got, want);
    assert_eq!(l.fields[0].1.type_name(), "float");
    assert_eq!(l.fields[8].1.type_name(), "integer");
    assert_eq!(l.fields[10].1.type_name(), "unsigned");
}

#[test]
fn booleans() {
    for t in ["t", "T", "true", "True", "TRUE"] {
        assert_eq!(
            one(&format!("m b={t}")).fields[0].1,
            FieldValue::Bool(true),
            "{t}"
        );
    }
    for f in ["f", "F", "false", "False", "FALSE"] {
        assert_eq!(
            one(&format!("m b={f}")).fields[0].1,
            FieldValue::Bool(false),
            "{f}"
        );
    }
    for bad in ["tru", "truE", "tRUE", "fals", "yes", "true1"] {
        err(format!("m b={bad}").as_bytes());
    }
    assert_eq!(one("m b=true").fields[0].1.type_name(), "boolean");
}

#[test]
fn integer_and_timestamp_ranges() {
    assert_eq!(
        one("m i=9223372036854775807i,j=-9223372036854775808i,u=18446744073709551615u")
            .fields
            .iter()
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>(),
        vec![
            FieldValue::Int(i64::MAX),
            FieldValue::Int(i64::MIN),
            FieldValue::UInt(u64::MAX)
        ]
    );
    err(b"m i=9223372036854775808i");
    err(b"m i=-9223372036854775809i");
    err(b"m u=18446744073709551616u");
    err(b"m u=-1u");
    err(b"m f=1e400");
    assert_eq!(one("m f=1 -9223372036854775808").timestamp, Some(i64::MIN));
    assert_eq!(one("m f=1 -5").timestamp, Some(-5));
    err(b"m f=1 9223372036854775808");
    err(b"m f=1 1.5");
    err(b"m f=1 12a");
    err(b"m f=1 -");
    err(b"m f=1 1-2");
}

#[test]
fn rejects_bad_numbers() {
    for bad in [
        "1.5i", "1x", "0x10", "1_000", "1e", "--1", "-inf", "-nan", ".", "-", "1..2", "1i5",
    ] {
        let e = err(format!("m v={bad}").as_bytes());
        assert_eq!((e.line, e.column), (1, 5), "{bad}: {e}");
    }
    err(b"m v=NaN");
    err(b"m v=inf");
    err(b"m v=+1");
}

#[test]
fn structural_errors() {
    for bad in [
        &b"cpu"[..],        // no fields
        b"cpu,host=a",      // no fields after tags
        b"cpu ",            // space but no field
        b"cpu,",            // comma at end
        b"cpu, f=1",        // white space after comma
        b"cpu,t f=1",       // tag without '='
        b"cpu,t= f=1",      // tag without value
        b"cpu,=v f=1",      // tag without key
        b"cpu f",           // field without '='
        b"cpu f=",          // field without value
        b"cpu f= 1",        // field without value
        b"cpu f=1,",        // trailing comma
        b"cpu f=1,,g=2",    // empty field
        b"cpu =1",          // empty field key
        b"cpu f=\"abc",     // unterminated string
        b"cpu f=\"a\"b",    // text after string
        b"cpu\tf=1",        // tab is not a separator
        b"cpu f=1\t1",      // tab is not a separator
        b"cpu f=1 1 2",     // text after timestamp
        b"cpu f=abc",       // unknown value type
        b",t=v f=1",        // empty measurement
        b"\tcpu f=1",       // tab before the measurement
        b"cpu,t=a,t=b f=1", // duplicate tag key
        b"cpu,t=a=b f=1",   // unescaped '=' in a tag value
        b"cpu\x01 f=1",     // control character in measurement
        b"cpu,k\x01=v f=1", // control character in tag key
        b"cpu k\x01=1",     // control character in field key
        b"cpu f=1\rg",      // lone carriage return
        b"\rcpu f=1",       // lone carriage return
    ] {
        err(bad);
    }
}

#[test]
fn accepted_oddities() {
    // Leading spaces, repeated separators and trailing spaces are fine.
    let l = one("   cpu,t=v    f=1   123   ");
    assert_eq!((l.measurement.as_ref(), l.timestamp), ("cpu", Some(123)));
    // Control characters other than CR/LF are allowed in tag values.
    assert_eq!(one("m,k=x\x01y v=1").tags[0].1, "x\x01y");
    // Field keys may repeat; both are returned.
    assert_eq!(one("m f=1,f=2").fields.len(), 2);
    // Strings may hold any byte but an unescaped quote, control characters included.
    assert_eq!(
        one("m s=\"\x01\t\"").fields[0].1,
        FieldValue::Str("\x01\t".into())
    );
}

#[test]
fn comments_and_blank_lines_are_skipped() {
    let input = "# header\n\n   \n  # indented comment\ncpu f=1\n#tail\n\n";
    let lines = ok(input);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].measurement, "cpu");
    assert!(ok("").is_empty());
    assert!(ok("\n\n# only a comment").is_empty());
    // Comments may hold non-UTF-8 bytes but no control characters (tab included).
    assert_eq!(parse_lines(b"# \xff\xfe\ncpu f=1").count(), 1);
    let e = err(b"cpu f=1\n# bad\tcomment\ncpu f=2");
    assert_eq!((e.line, e.column), (2, 6), "{e}");
    // A `#` after the start of a line is not a comment: no trailing comments.
    assert_eq!(one("cpu,t=#a f=1").tags[0].1, "#a");
    err(b"cpu f=1 # trailing");
}

#[test]
fn crlf_line_ends() {
    let lines = ok("cpu f=1\r\ncpu f=2 7\r\n\r\ncpu s=\"x\"\r\n");
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1].timestamp, Some(7));
    assert_eq!(lines[2].fields[0].1, FieldValue::Str("x".into()));
    // A CR right at the end of input also ends the line.
    assert_eq!(ok("cpu f=1 5\r").len(), 1);
    // A CR inside a string is just a byte.
    assert_eq!(
        one("cpu s=\"a\rb\"").fields[0].1,
        FieldValue::Str("a\rb".into())
    );
}

#[test]
fn strings_may_span_lines() {
    let input = "cpu s=\"a\nb\"\ncpu f=1\ncpu g=oops";
    let results: Vec<_> = parse_lines(input.as_bytes()).collect();
    assert_eq!(results.len(), 3);
    let first = results[0].as_ref().map_err(ToString::to_string);
    assert_eq!(
        first.map(|l| l.fields[0].1.clone()),
        Ok(FieldValue::Str("a\nb".into()))
    );
    assert!(results[1].is_ok());
    let e = results[2]
        .as_ref()
        .err()
        .cloned()
        .map(|e| (e.line, e.column));
    assert_eq!(e, Some((4, 7)));
}

#[test]
fn error_reports_its_line_and_iteration_continues() {
    let input = "cpu f=1\ncpu f=2\ncpu,host=a f=3i,g=bad 10\ncpu f=4\ncpu f=5\n";
    let results: Vec<_> = parse_lines(input.as_bytes()).collect();
    assert_eq!(results.len(), 5);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.is_err(), i == 2, "entry {i}: {r:?}");
    }
    let e = results[2].clone().err().map(|e| (e.line, e.column));
    assert_eq!(e, Some((3, 19)));
    let last = results[4].as_ref().ok().map(|l| l.fields[0].1.clone());
    assert_eq!(last, Some(FieldValue::Float(5.0)));
}

#[test]
fn error_columns_point_at_the_problem() {
    let at = |input: &[u8]| {
        let e = err(input);
        (e.line, e.column)
    };
    assert_eq!(at(b"cpu,t=a f=1,g=x"), (1, 15)); // bad value
    assert_eq!(at(b"cpu,t f=1"), (1, 6)); // missing '=' after tag key
    assert_eq!(at(b"cpu f=1 12x"), (1, 9)); // bad timestamp
    assert_eq!(at(b"\n\n  cpu"), (3, 6)); // end of input where a tag or field belongs
    assert_eq!(at(b"cpu,t=a\xff f=1"), (1, 8)); // the invalid UTF-8 byte
    assert_eq!(at(b"ok f=1\nbad\xff f=1"), (2, 4));
    assert_eq!(at(b"cpu f=\"open\nstill open"), (1, 7)); // the opening quote
}

#[test]
fn unterminated_string_consumes_the_rest() {
    let results: Vec<_> = parse_lines(b"cpu s=\"open\ncpu f=1\ncpu f=2").collect();
    assert_eq!(results.len(), 1);
    assert!(results[0].is_err());
}

#[test]
fn invalid_utf8_is_rejected_everywhere_but_comments() {
    for bad in [
        &b"m\xff f=1"[..],
        b"m,k\xff=v f=1",
        b"m,k=v\xff f=1",
        b"m f\xff=1",
        b"m f=\"\xff\"",
        b"m\\ \xff f=1", // also when the token had an escape
    ] {
        err(bad);
    }
}

#[test]
fn error_display_format() {
    let e = err(b"cpu f=1\ncpu f=x");
    assert_eq!(e.line, 2);
    assert_eq!(e.column, 7);
    let shown = e.to_string();
    assert!(shown.starts_with("line 2, column 7: "), "{shown}");
    let as_error: &dyn std::error::Error = &e;
    assert_eq!(as_error.to_string(), shown);
}

#[test]
fn next_into_reuses_the_line() {
    let input = b"a,t=1 f=1 1\nb g=\"s\",h=2i\n\nc\\ d k=t 3\nbad\n";
    let mut lines = parse_lines(input);
    let mut line = Line::default();
    let mut seen = Vec::new();
    while let Some(r) = lines.next_into(&mut line) {
        match r {
            Ok(()) => seen.push(format!(
                "{}:{}:{}:{:?}",
                line.measurement,
                line.tags.len(),
                line.fields.len(),
                line.timestamp
            )),
            Err(e) => seen.push(format!("error line {}", e.line)),
        }
    }
    assert_eq!(
        seen,
        [
            "a:1:1:Some(1)",
            "b:0:2:None",
            "c d:0:1:Some(3)",
            "error line 5"
        ]
    );
    // The iterator and next_into agree.
    let via_iter: Vec<_> = parse_lines(input)
        .map(|r| r.map(Line::into_owned))
        .collect();
    assert_eq!(via_iter.len(), 4);
}

#[test]
fn into_owned_outlives_the_input() {
    let owned = {
        let input = String::from("m,t=v f=\"s\" 1");
        let line = parse_lines(input.as_bytes())
            .next()
            .and_then(Result::ok)
            .map(Line::into_owned);
        line
    };
    let owned = owned.map(|l| (l.measurement.into_owned(), l.fields.len()));
    assert_eq!(owned, Some(("m".to_owned(), 1)));
}
