//! Conformance: the parser against every `decode` case of the public line-protocol corpus
//! (influxdata/line-protocol-corpus, kept in the steering repo's shared/).
//!
//! Each case gives input bytes, a precision and a default time. The expected outcome is
//! either an error (any error will do; wording is not compared) or the list of points,
//! with tags sorted by key and the time in nanoseconds.

use std::borrow::Cow;

use base64::Engine as _;
use serde_json::Value;
use shoal_lineproto::{parse_lines, FieldValue, Precision};

/// The public corpus in the steering repository's `shared/`, beside the clone.
fn corpus_path() -> std::path::PathBuf {
    shoal_common::fuzz::repo_root().join("../shared/conformance/line-protocol/corpus.json")
}

/// Corpus cases whose expected outcome conflicts with InfluxDB 2.x semantics, each with
/// the reason. The parser is allowed to disagree with exactly these.
const KNOWN_CONFLICTS: &[(&str, &str)] = &[];

/// Conflicts must stay rare; a longer list means the parser drifted from the corpus.
const MAX_KNOWN_CONFLICTS: usize = 5;

#[derive(Debug, PartialEq)]
enum Val {
    Float(f64),
    Int(i64),
    UInt(u64),
    Str(String),
    Bool(bool),
}

#[derive(Debug, PartialEq)]
struct Point {
    name: String,
    tags: Vec<(String, String)>,
    fields: Vec<(String, Val)>,
    time: i64,
}

type Outcome = Result<Vec<Point>, String>;

#[test]
fn corpus_decode_cases_agree() {
    let text = match std::fs::read_to_string(corpus_path()) {
        Ok(t) => t,
        Err(e) => {
            println!(
                "SKIPPED: line-protocol corpus not readable at {}: {e}",
                corpus_path().display()
            );
            return;
        }
    };
    let corpus: Value = serde_json::from_str(&text).expect("corpus.json is valid JSON");
    let cases = corpus["decode"]
        .as_object()
        .expect("corpus has a `decode` object");
    assert!(
        KNOWN_CONFLICTS.len() <= MAX_KNOWN_CONFLICTS,
        "too many known conflicts"
    );

    let (mut checked, mut expect_ok, mut expect_err) = (0usize, 0usize, 0usize);
    let mut mismatches = Vec::new();
    let mut conflicts_seen = Vec::new();
    for (key, case) in cases {
        checked += 1;
        let expected = expected_outcome(key, &case["output"]);
        match &expected {
            Ok(_) => expect_ok += 1,
            Err(_) => expect_err += 1,
        }
        let actual = decode(key, &case["input"]);
        let agrees = match (&expected, &actual) {
            (Ok(want), Ok(got)) => want == got,
            (Err(_), Err(_)) => true,
            _ => false,
        };
        let conflict = KNOWN_CONFLICTS.iter().find(|(k, _)| k == key);
        match (agrees, conflict) {
            (true, None) => {}
            (false, Some(_)) => conflicts_seen.push(key.clone()),
            (true, Some((_, why))) => mismatches.push(format!(
                "{key}: listed in KNOWN_CONFLICTS ({why}) but now agrees; remove it"
            )),
            (false, None) => mismatches.push(format!(
                "{key}: input {:?}\n    expected {expected:?}\n    got      {actual:?}",
                String::from_utf8_lossy(&input_bytes(key, &case["input"]))
            )),
        }
    }

    println!(
        "line-protocol corpus: {checked} decode cases checked \
         ({expect_ok} expect points, {expect_err} expect an error), {} mismatches",
        mismatches.len()
    );
    println!(
        "known conflicts with InfluxDB 2.x semantics ({}):",
        KNOWN_CONFLICTS.len()
    );
    for (key, why) in KNOWN_CONFLICTS {
        println!("  {key}: {why}");
    }
    for m in mismatches.iter().take(15) {
        println!("MISMATCH {m}");
    }
    assert!(checked > 6000, "corpus looks truncated: {checked} cases");
    assert_eq!(
        conflicts_seen.len(),
        KNOWN_CONFLICTS.len(),
        "every known conflict must be a corpus case that still disagrees"
    );
    assert_eq!(
        mismatches.len(),
        0,
        "{} corpus mismatches",
        mismatches.len()
    );
}

fn input_bytes(key: &str, input: &Value) -> Vec<u8> {
    match &input["text"] {
        Value::String(s) => s.as_bytes().to_vec(),
        other => {
            let b64 = other["binary"]
                .as_str()
                .unwrap_or_else(|| panic!("{key}: text is neither a string nor binary"));
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_else(|e| panic!("{key}: bad base64: {e}"))
        }
    }
}

/// Parses the case's input the way a server would: all-or-nothing, tags sorted, the
/// default time (truncated to the precision) for entries without a timestamp.
fn decode(key: &str, input: &Value) -> Outcome {
    let bytes = input_bytes(key, input);
    let precision_text = input["precision"]
        .as_str()
        .unwrap_or_else(|| panic!("{key}: no precision"));
    let precision = precision_text
        .strip_prefix('1')
        .and_then(Precision::parse)
        .unwrap_or_else(|| panic!("{key}: unknown precision {precision_text:?}"));
    let default_time = input["defaultTime"]
        .as_i64()
        .unwrap_or_else(|| panic!("{key}: no defaultTime"));

    let mut points = Vec::new();
    for line in parse_lines(&bytes) {
        let line = line.map_err(|e| e.to_string())?;
        let time = match line.timestamp {
            Some(ts) => precision
                .to_nanos(ts)
                .ok_or_else(|| format!("timestamp {ts} out of range"))?,
            None => precision.truncate_nanos(default_time),
        };
        let mut tags: Vec<(String, String)> = line
            .tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tags.sort();
        let fields = line
            .fields
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    FieldValue::Float(f) => Val::Float(*f),
                    FieldValue::Int(i) => Val::Int(*i),
                    FieldValue::UInt(u) => Val::UInt(*u),
                    FieldValue::Str(s) => Val::Str(Cow::to_string(s)),
                    FieldValue::Bool(b) => Val::Bool(*b),
                };
                (k.to_string(), v)
            })
            .collect();
        points.push(Point {
            name: line.measurement.to_string(),
            tags,
            fields,
            time,
        });
    }
    Ok(points)
}

fn expected_outcome(key: &str, output: &Value) -> Outcome {
    if let Some(e) = output.get("error") {
        return Err(e.as_str().unwrap_or("error").to_owned());
    }
    let result = output["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{key}: output has neither result nor error"));
    let str_of = |v: &Value| {
        v.as_str()
            .unwrap_or_else(|| panic!("{key}: expected a string, got {v}"))
            .to_owned()
    };
    Ok(result
        .iter()
        .map(|p| {
            let mut tags: Vec<(String, String)> = p["tags"]
                .as_array()
                .map(|tags| {
                    tags.iter()
                        .map(|t| (str_of(&t["key"]), str_of(&t["value"])))
                        .collect()
                })
                .unwrap_or_default();
            tags.sort();
            let fields = p["fields"]
                .as_array()
                .map(|fields| {
                    fields
                        .iter()
                        .map(|f| (str_of(&f["key"]), expected_value(key, &f["value"])))
                        .collect()
                })
                .unwrap_or_default();
            Point {
                name: str_of(&p["name"]),
                tags,
                fields,
                time: p["time"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("{key}: bad time")),
            }
        })
        .collect())
}

fn expected_value(key: &str, v: &Value) -> Val {
    let parsed = if let Some(f) = v.get("float") {
        f.as_f64().map(Val::Float)
    } else if let Some(i) = v.get("int") {
        i.as_i64().map(Val::Int)
    } else if let Some(u) = v.get("uint") {
        u.as_u64().map(Val::UInt)
    } else if let Some(s) = v.get("string") {
        s.as_str().map(|s| Val::Str(s.to_owned()))
    } else if let Some(b) = v.get("bool") {
        b.as_bool().map(Val::Bool)
    } else {
        None
    };
    parsed.unwrap_or_else(|| panic!("{key}: unexpected field value {v}"))
}
