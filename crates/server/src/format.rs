//! Result encodings of `POST /v1/sql`: JSON (default), CSV, JSON Lines, Arrow IPC stream.
//!
//! JSON: `{"columns":[{"name":…,"type":…}],"rows":[[…],…]}`; numbers stay numbers,
//! timestamps are RFC 3339 strings in UTC, NULL is `null`.

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, SchemaRef,
    TimeUnit, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    JsonLines,
    Arrow,
}

impl Format {
    pub fn parse(s: Option<&str>) -> Result<Format, String> {
        match s.map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("json") => Ok(Format::Json),
            Some("csv") => Ok(Format::Csv),
            Some("jsonl") | Some("ndjson") => Ok(Format::JsonLines),
            Some("arrow") => Ok(Format::Arrow),
            Some(other) => Err(format!(
                "unknown format {other:?}: use json, csv, jsonl or arrow"
            )),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv",
            Format::JsonLines => "application/x-ndjson",
            Format::Arrow => "application/vnd.apache.arrow.stream",
        }
    }
}

fn format_options() -> FormatOptions<'static> {
    FormatOptions::default()
        .with_null("")
        .with_timestamp_format(Some("%Y-%m-%dT%H:%M:%S%.fZ"))
}

/// One cell as JSON.
fn cell(array: &dyn Array, row: usize, fmt: &ArrayFormatter<'_>) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Boolean => json!(array.as_boolean().value(row)),
        DataType::Int8 => json!(array.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => json!(array.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => json!(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => json!(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => json!(array.as_primitive::<UInt8Type>().value(row)),
        DataType::UInt16 => json!(array.as_primitive::<UInt16Type>().value(row)),
        DataType::UInt32 => json!(array.as_primitive::<UInt32Type>().value(row)),
        DataType::UInt64 => json!(array.as_primitive::<UInt64Type>().value(row)),
        DataType::Float32 => float(f64::from(array.as_primitive::<Float32Type>().value(row))),
        DataType::Float64 => float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => json!(array.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => json!(array.as_string::<i64>().value(row)),
        DataType::Utf8View => json!(array.as_string_view().value(row)),
        _ => json!(fmt.value(row).to_string()),
    }
}

/// NaN and infinities are not JSON numbers; they are sent as strings.
fn float(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        json!(v.to_string())
    }
}

fn type_name(t: &DataType) -> String {
    match t {
        DataType::Timestamp(TimeUnit::Nanosecond, None) => "timestamp".into(),
        DataType::Float64 => "float".into(),
        DataType::Int64 => "integer".into(),
        DataType::UInt64 => "unsigned".into(),
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => "string".into(),
        DataType::Boolean => "boolean".into(),
        other => other.to_string(),
    }
}

/// Display formatters for every column of a batch (for cells JSON has no native type for).
fn formatters<'a>(
    b: &'a RecordBatch,
    opts: &'a FormatOptions<'a>,
) -> Result<Vec<ArrayFormatter<'a>>, String> {
    b.columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), opts))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())
}

pub fn to_json(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, String> {
    let columns: Vec<Value> = schema
        .fields()
        .iter()
        .map(|f| json!({"name": f.name(), "type": type_name(f.data_type())}))
        .collect();
    let mut rows = vec![];
    let opts = format_options();
    for b in batches {
        let fmts = formatters(b, &opts)?;
        for r in 0..b.num_rows() {
            let row: Vec<Value> = b
                .columns()
                .iter()
                .zip(&fmts)
                .map(|(c, f)| cell(c.as_ref(), r, f))
                .collect();
            rows.push(Value::Array(row));
        }
    }
    serde_json::to_vec(&json!({"columns": columns, "rows": rows})).map_err(|e| e.to_string())
}

pub fn to_jsonl(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, String> {
    let mut out = vec![];
    let opts = format_options();
    for b in batches {
        let fmts = formatters(b, &opts)?;
        for r in 0..b.num_rows() {
            let mut obj = serde_json::Map::new();
            for ((field, c), f) in schema.fields().iter().zip(b.columns()).zip(&fmts) {
                obj.insert(field.name().clone(), cell(c.as_ref(), r, f));
            }
            serde_json::to_writer(&mut out, &Value::Object(obj)).map_err(|e| e.to_string())?;
            out.push(b'\n');
        }
    }
    Ok(out)
}

pub fn to_csv(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, String> {
    let mut out = vec![];
    {
        let mut w = datafusion::arrow::csv::WriterBuilder::new()
            .with_header(true)
            .with_timestamp_format("%Y-%m-%dT%H:%M:%S%.fZ".into())
            .build(&mut out);
        if batches.is_empty() {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Ok(format!("{}\n", names.join(",")).into_bytes());
        }
        for b in batches {
            w.write(b).map_err(|e| e.to_string())?;
        }
    }
    Ok(out)
}

pub fn to_arrow(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, String> {
    let mut out = vec![];
    {
        let mut w = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut out, schema)
            .map_err(|e| e.to_string())?;
        for b in batches {
            w.write(b).map_err(|e| e.to_string())?;
        }
        w.finish().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

pub fn encode(
    format: Format,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<u8>, String> {
    match format {
        Format::Json => to_json(schema, batches),
        Format::Csv => to_csv(schema, batches),
        Format::JsonLines => to_jsonl(schema, batches),
        Format::Arrow => to_arrow(schema, batches),
    }
}
