//! Line protocol → Arrow batches → the Raft write path.
//!
//! ```text
//! body ─▶ parse every line (any error rejects the whole request: 400, line and reason)
//!      ─▶ group rows by measurement, type every column (conflicts: 400 naming both types)
//!      ─▶ new tables/columns: one DDL batch through group 0
//!      ─▶ one Arrow batch per table ─▶ Writer (split by vshard, propose, await commit)
//! ```
//! A request is all-or-nothing with respect to validation: nothing is proposed until every
//! line has parsed and type-checked. Once proposed, a request's parts commit independently;
//! a retry of the same body is recognised (request key = hash of body, database and
//! precision, or the `Idempotency-Key` header) and never duplicates rows.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampNanosecondArray, UInt64Builder,
};
use datafusion::arrow::datatypes::Schema;
use shoal_common::schema::{validate_name, ColumnDef, ColumnType, TableSchema, TIME_COLUMN};
use shoal_consensus::{DdlOp, Response, TableEntry};
use shoal_lineproto::{FieldValue, Precision};
use shoal_query::{ErrorKind, QueryEngine, QueryError, WriteOutcome};
use shoal_storage::arrow_schema::arrow_type;

/// Lines one request may carry.
pub const MAX_LINES_PER_REQUEST: usize = 5_000_000;

#[derive(Clone)]
enum Value<'a> {
    Float(f64),
    Int(i64),
    UInt(u64),
    Bool(bool),
    Str(Cow<'a, str>),
}

struct Column<'a> {
    name: Cow<'a, str>,
    column_type: ColumnType,
    first_line: usize,
    /// (row, value), rows ascending; a row without the column is null.
    values: Vec<(u32, Value<'a>)>,
}

struct TableRows<'a> {
    name: Cow<'a, str>,
    ts: Vec<i64>,
    columns: Vec<Column<'a>>,
    by_name: HashMap<Cow<'a, str>, usize>,
    /// The column the next key of the current line is expected to be: lines of one
    /// measurement nearly always carry the same keys in the same order, so a string
    /// compare against this guess replaces the hash lookup.
    next_guess: usize,
}

fn field_type(v: &FieldValue<'_>) -> ColumnType {
    match v {
        FieldValue::Float(_) => ColumnType::Float,
        FieldValue::Int(_) => ColumnType::Integer,
        FieldValue::UInt(_) => ColumnType::UInteger,
        FieldValue::Str(_) => ColumnType::String,
        FieldValue::Bool(_) => ColumnType::Boolean,
    }
}

fn kind_word(t: ColumnType) -> &'static str {
    if t == ColumnType::Tag {
        "a tag"
    } else {
        t.name()
    }
}

impl<'a> TableRows<'a> {
    fn push(
        &mut self,
        line_no: usize,
        name: Cow<'a, str>,
        t: ColumnType,
        v: Value<'a>,
    ) -> Result<(), QueryError> {
        let row = (self.ts.len() - 1) as u32;
        let guess = self.next_guess;
        let idx = match self.columns.get(guess) {
            Some(c) if c.name == name => Some(guess),
            _ => self.by_name.get(name.as_ref()).copied(),
        };
        let idx = match idx {
            Some(i) => i,
            None => {
                if name == TIME_COLUMN {
                    return Err(QueryError::bad_input(format!(
                        "line {line_no}: {name:?} is reserved for the time column and cannot be a tag or field"
                    )));
                }
                validate_name(&name)
                    .map_err(|e| QueryError::bad_input(format!("line {line_no}: {e}")))?;
                self.by_name.insert(name.clone(), self.columns.len());
                self.columns.push(Column {
                    name,
                    column_type: t,
                    first_line: line_no,
                    values: vec![],
                });
                self.columns.len() - 1
            }
        };
        self.next_guess = idx + 1;
        let col = &mut self.columns[idx];
        if col.column_type != t {
            return Err(QueryError::bad_input(format!(
                "line {line_no}: field type conflict: {:?} in measurement {:?} is {} here but {} on line {}",
                col.name,
                self.name,
                kind_word(t),
                kind_word(col.column_type),
                col.first_line
            )));
        }
        match col.values.last_mut() {
            // A repeated key within one line: the last value wins.
            Some(last) if last.0 == row => last.1 = v,
            _ => col.values.push((row, v)),
        }
        Ok(())
    }
}

/// Parses and groups a body's lines. Borrowed from `body`: no copies of tags or strings.
fn parse_body<'a>(
    body: &'a [u8],
    precision: Precision,
    now: i64,
) -> Result<Vec<TableRows<'a>>, QueryError> {
    let mut tables: Vec<TableRows<'a>> = vec![];
    let mut by_name: HashMap<Cow<'a, str>, usize> = HashMap::new();
    let mut last_table: Option<usize> = None;
    let mut lines = 0usize;
    let mut iter = shoal_lineproto::parse_lines(body);
    // One line's vectors, reused for every line (the parser clears them).
    let mut line = shoal_lineproto::Line::default();
    while let Some(parsed) = iter.next_into(&mut line) {
        parsed.map_err(|e| QueryError::bad_input(format!("malformed line protocol: {e}")))?;
        let line_no = iter.entry_line();
        lines += 1;
        if lines > MAX_LINES_PER_REQUEST {
            return Err(QueryError::new(
                ErrorKind::TooLarge,
                format!("more than {MAX_LINES_PER_REQUEST} lines in one request"),
            ));
        }
        let ts = match line.timestamp {
            Some(raw) => precision.to_nanos(raw).ok_or_else(|| {
                QueryError::bad_input(format!(
                    "line {line_no}: timestamp {raw} overflows nanoseconds at this precision"
                ))
            })?,
            None => now,
        };
        let measurement = std::mem::take(&mut line.measurement);
        let ti = match last_table {
            Some(i) if tables[i].name == measurement => i,
            _ => match by_name.get(measurement.as_ref()) {
                Some(&i) => i,
                None => {
                    validate_name(&measurement)
                        .map_err(|e| QueryError::bad_input(format!("line {line_no}: {e}")))?;
                    by_name.insert(measurement.clone(), tables.len());
                    tables.push(TableRows {
                        name: measurement,
                        ts: vec![],
                        columns: vec![],
                        by_name: HashMap::new(),
                        next_guess: 0,
                    });
                    tables.len() - 1
                }
            },
        };
        last_table = Some(ti);
        let t = &mut tables[ti];
        t.ts.push(ts);
        t.next_guess = 0;
        for (k, v) in line.tags.drain(..) {
            t.push(line_no, k, ColumnType::Tag, Value::Str(v))?;
        }
        for (k, v) in line.fields.drain(..) {
            let ft = field_type(&v);
            let value = match v {
                FieldValue::Float(f) => Value::Float(f),
                FieldValue::Int(i) => Value::Int(i),
                FieldValue::UInt(u) => Value::UInt(u),
                FieldValue::Bool(b) => Value::Bool(b),
                FieldValue::Str(s) => Value::Str(s),
            };
            t.push(line_no, k, ft, value)?;
        }
    }
    Ok(tables)
}

/// Column definitions for creating or extending a table from what a request carries.
fn wanted_schema(t: &TableRows<'_>) -> Result<TableSchema, QueryError> {
    let mut cols: Vec<ColumnDef> = t
        .columns
        .iter()
        .filter(|c| c.column_type == ColumnType::Tag)
        .map(|c| ColumnDef {
            name: c.name.to_string(),
            column_type: c.column_type,
        })
        .collect();
    cols.extend(
        t.columns
            .iter()
            .filter(|c| c.column_type != ColumnType::Tag)
            .map(|c| ColumnDef {
                name: c.name.to_string(),
                column_type: c.column_type,
            }),
    );
    TableSchema::new(&t.name, cols, None).map_err(|e| QueryError::bad_input(e.to_string()))
}

fn check_against_catalog(t: &TableRows<'_>, entry: &TableEntry) -> Result<bool, QueryError> {
    let mut missing = false;
    for c in &t.columns {
        match entry.schema.column(&c.name) {
            None => missing = true,
            Some(existing) if existing.column_type != c.column_type => {
                return Err(QueryError::bad_input(format!(
                    "line {}: field type conflict: {:?} in measurement {:?} is {} here, but the table stores it as {}",
                    c.first_line,
                    c.name,
                    t.name,
                    kind_word(c.column_type),
                    kind_word(existing.column_type)
                )))
            }
            Some(_) => {}
        }
    }
    Ok(missing)
}

fn build_batch(t: &TableRows<'_>, entry: &TableEntry) -> Result<RecordBatch, QueryError> {
    let rows = t.ts.len();
    let mut fields = vec![];
    let mut arrays: Vec<ArrayRef> = vec![];
    for def in &entry.schema.columns {
        let array: ArrayRef = if def.column_type == ColumnType::Timestamp {
            Arc::new(TimestampNanosecondArray::from(t.ts.clone()))
        } else {
            let Some(&ci) = t.by_name.get(def.name.as_str()) else {
                continue;
            };
            build_column(&t.columns[ci], rows)
        };
        fields.push(datafusion::arrow::datatypes::Field::new(
            &def.name,
            arrow_type(def.column_type),
            def.column_type != ColumnType::Timestamp,
        ));
        arrays.push(array);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| QueryError::new(ErrorKind::Internal, e.to_string()))
}

fn build_column(c: &Column<'_>, rows: usize) -> ArrayRef {
    macro_rules! fill {
        ($builder:expr, $variant:ident) => {{
            let mut b = $builder;
            let mut next = 0usize;
            for (row, v) in &c.values {
                while next < *row as usize {
                    b.append_null();
                    next += 1;
                }
                if let Value::$variant(x) = v {
                    b.append_value(x.clone());
                } else {
                    b.append_null();
                }
                next += 1;
            }
            while next < rows {
                b.append_null();
                next += 1;
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    match c.column_type {
        ColumnType::Float => fill!(Float64Builder::with_capacity(rows), Float),
        ColumnType::Integer => fill!(Int64Builder::with_capacity(rows), Int),
        ColumnType::UInteger => fill!(UInt64Builder::with_capacity(rows), UInt),
        ColumnType::Boolean => fill!(BooleanBuilder::with_capacity(rows), Bool),
        ColumnType::Tag | ColumnType::String | ColumnType::Timestamp => {
            fill!(StringBuilder::with_capacity(rows, rows * 8), Str)
        }
    }
}

/// Writes a line-protocol body. `request_key` makes retries idempotent.
pub async fn write_lines(
    engine: &QueryEngine,
    body: &[u8],
    precision: Precision,
    request_key: u64,
) -> Result<WriteOutcome, QueryError> {
    let now = precision.truncate_nanos(shoal_common::time::now_nanos());
    let tables = parse_body(body, precision, now)?;
    let entries = prepare(engine, &tables).await?;
    let batches = tables
        .iter()
        .zip(entries.iter())
        .map(|(t, e)| build_batch(t, e).map(|b| (e, b)))
        .collect::<Result<Vec<_>, _>>()?;
    engine
        .writer()
        .write_many(&batches, Some(request_key))
        .await
}

/// Type-checks every table against the catalog and creates what is missing (one DDL batch).
async fn prepare(
    engine: &QueryEngine,
    tables: &[TableRows<'_>],
) -> Result<Vec<TableEntry>, QueryError> {
    let catalog = engine.registry().catalog();
    let mut ops = vec![];
    {
        let cat = catalog.read().clone();
        for t in tables {
            match cat.tables.get(t.name.as_ref()) {
                Some(entry) => {
                    if check_against_catalog(t, entry)? {
                        ops.push(DdlOp::EnsureTable {
                            schema: wanted_schema(t)?,
                        });
                    }
                }
                None => ops.push(DdlOp::EnsureTable {
                    schema: wanted_schema(t)?,
                }),
            }
        }
    }
    if !ops.is_empty() {
        // Another request may have changed the table concurrently in a conflicting way.
        if let Response::Rejected(msg) = engine.registry().propose_ddl(ops).await? {
            return Err(QueryError::bad_input(format!("field type conflict: {msg}")));
        }
    }
    let cat = catalog.read().clone();
    tables
        .iter()
        .map(|t| {
            let entry = cat.tables.get(t.name.as_ref()).cloned().ok_or_else(|| {
                QueryError::new(
                    ErrorKind::Unavailable,
                    format!("table {} was dropped during the write", t.name),
                )
            })?;
            check_against_catalog(t, &entry)?;
            Ok(entry)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_measurement_and_types_columns() {
        let body =
            b"cpu,host=a usage=1.5 10\nmem,host=a free=3i 11\ncpu,host=b usage=2.5,idle=true 12\n";
        let tables = parse_body(body, Precision::Nanoseconds, 0).expect("parse");
        assert_eq!(tables.len(), 2);
        assert_eq!(tables[0].name, "cpu");
        assert_eq!(tables[0].ts, vec![10, 12]);
        let idle = &tables[0].columns[tables[0].by_name["idle"]];
        assert_eq!(idle.values.len(), 1);
        assert_eq!(
            idle.values[0].0, 1,
            "idle is set on the second cpu row only"
        );
    }

    /// The next-column guess must never put a value in the wrong column: keys in another
    /// order, a key missing, a new key, and another measurement in between.
    #[test]
    fn keys_in_any_order_land_in_their_columns() {
        let body = b"m,a=p x=1 1\nm x=2,y=3 2\nn,a=z v=1 3\nm,b=q y=4,x=5 4\nm,a=r x=6 5\n";
        let tables = parse_body(body, Precision::Nanoseconds, 0).expect("parse");
        let m = &tables[0];
        let col = |name: &str| &m.columns[m.by_name[name]].values;
        let floats = |name: &str| -> Vec<(u32, f64)> {
            col(name)
                .iter()
                .map(|(r, v)| match v {
                    Value::Float(f) => (*r, *f),
                    _ => panic!("{name} is not a float"),
                })
                .collect()
        };
        assert_eq!(floats("x"), vec![(0, 1.0), (1, 2.0), (2, 5.0), (3, 6.0)]);
        assert_eq!(floats("y"), vec![(1, 3.0), (2, 4.0)]);
        let rows: Vec<u32> = col("a").iter().map(|(r, _)| *r).collect();
        assert_eq!(rows, vec![0, 3]);
        let rows: Vec<u32> = col("b").iter().map(|(r, _)| *r).collect();
        assert_eq!(rows, vec![2]);
        assert_eq!(tables[1].name, "n");
        assert_eq!(tables[1].ts, vec![3]);
    }

    #[test]
    fn type_conflict_names_lines_and_types() {
        let body = b"m v=1 1\nm v=2 2\nm v=\"x\" 3\n";
        let err = parse_body(body, Precision::Nanoseconds, 0)
            .err()
            .expect("conflict");
        assert!(err.message.contains("line 3"), "{}", err.message);
        assert!(
            err.message.contains("string here but float on line 1"),
            "{}",
            err.message
        );
    }

    #[test]
    fn malformed_line_is_rejected_with_its_number() {
        let err = parse_body(b"m v=1 1\nm v= 2\n", Precision::Nanoseconds, 0)
            .err()
            .expect("bad");
        assert!(err.message.contains("line 2"), "{}", err.message);
    }

    /// Escaped keys and values are unescaped into owned strings that live with the request.
    #[test]
    fn escaped_names_and_values_survive() {
        let body = b"m\\ x,host=a\\ b v=\"q\\\"z\" 1\n";
        let tables = parse_body(body, Precision::Nanoseconds, 0).expect("parse");
        assert_eq!(tables[0].name, "m x");
        let host = &tables[0].columns[tables[0].by_name["host"]];
        assert!(matches!(&host.values[0].1, Value::Str(s) if s == "a b"));
        let v = &tables[0].columns[tables[0].by_name["v"]];
        assert!(matches!(&v.values[0].1, Value::Str(s) if s == "q\"z"));
    }

    #[test]
    fn ts_is_reserved() {
        let err = parse_body(b"m,ts=x v=1 1\n", Precision::Nanoseconds, 0)
            .err()
            .expect("reserved");
        assert!(err.message.contains("reserved"), "{}", err.message);
    }
}
