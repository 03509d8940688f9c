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
    ArrayRef, BooleanArray, BooleanBufferBuilder, DictionaryArray, Float64Array, Int32Array,
    Int64Array, RecordBatch, StringArray, StringBuilder, TimestampNanosecondArray, UInt64Array,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{Int32Type, Schema};
use shoal_common::schema::{validate_name, ColumnDef, ColumnType, TableSchema, TIME_COLUMN};
use shoal_consensus::{DdlOp, Response, TableEntry};
use shoal_lineproto::{FieldValue, Precision};
use shoal_query::{ErrorKind, QueryEngine, QueryError, WriteOutcome};

/// Lines one request may carry.
pub const MAX_LINES_PER_REQUEST: usize = 5_000_000;

/// A tag value's key in its column's dictionary.
type TagKey = i32;

/// Distinct tag values of one column beyond which the column would overflow its
/// dictionary keys; a request can hold at most [`MAX_LINES_PER_REQUEST`] values, far less.
const _: () = assert!(MAX_LINES_PER_REQUEST < i32::MAX as usize);

/// A column's values as the lines are read, already in the Arrow layout they end up in:
/// no per-value enum, no second pass. Tags are dictionary-encoded as they arrive, so the
/// vshard split hashes each distinct value once and storage never casts them.
enum Values<'a> {
    Float(Vec<f64>),
    Int(Vec<i64>),
    UInt(Vec<u64>),
    Bool(BooleanBufferBuilder),
    Str(Vec<Cow<'a, str>>),
    Tag {
        keys: Vec<TagKey>,
        dict: Vec<Cow<'a, str>>,
        /// Seeded per map, so a body cannot be crafted to collide every tag value.
        index: HashMap<Cow<'a, str>, TagKey, foldhash::fast::RandomState>,
    },
}

/// One parsed value, typed as the line protocol typed it.
enum Value<'a> {
    Float(f64),
    Int(i64),
    UInt(u64),
    Bool(bool),
    Str(Cow<'a, str>),
}

impl<'a> Values<'a> {
    fn new(t: ColumnType, capacity: usize) -> Values<'a> {
        match t {
            ColumnType::Float => Values::Float(Vec::with_capacity(capacity)),
            ColumnType::Integer => Values::Int(Vec::with_capacity(capacity)),
            ColumnType::UInteger => Values::UInt(Vec::with_capacity(capacity)),
            ColumnType::Boolean => Values::Bool(BooleanBufferBuilder::new(capacity)),
            ColumnType::Tag => Values::Tag {
                keys: Vec::with_capacity(capacity),
                dict: vec![],
                index: HashMap::default(),
            },
            ColumnType::String | ColumnType::Timestamp => Values::Str(Vec::with_capacity(capacity)),
        }
    }

    /// Appends `v`, or replaces the last value when `replace` (a key repeated within one
    /// line: the last value wins). The caller has checked that `v` has this column's type.
    fn put(&mut self, v: Value<'a>, replace: bool) {
        fn set<T>(vec: &mut Vec<T>, x: T, replace: bool) {
            match vec.last_mut() {
                Some(last) if replace => *last = x,
                _ => vec.push(x),
            }
        }
        match (self, v) {
            (Values::Float(vec), Value::Float(x)) => set(vec, x, replace),
            (Values::Int(vec), Value::Int(x)) => set(vec, x, replace),
            (Values::UInt(vec), Value::UInt(x)) => set(vec, x, replace),
            (Values::Bool(b), Value::Bool(x)) => {
                if replace {
                    let at = b.len() - 1;
                    b.set_bit(at, x);
                } else {
                    b.append(x);
                }
            }
            (Values::Str(vec), Value::Str(x)) => set(vec, x, replace),
            (Values::Tag { keys, dict, index }, Value::Str(x)) => {
                let key = match index.get(x.as_ref()) {
                    Some(&k) => k,
                    None => {
                        let k = dict.len() as TagKey;
                        dict.push(x.clone());
                        index.insert(x, k);
                        k
                    }
                };
                set(keys, key, replace);
            }
            _ => unreachable!("a value is put only into a column of its type"),
        }
    }

    /// Appends a placeholder for a row without a value (its validity bit says null).
    fn put_null(&mut self) {
        match self {
            Values::Float(v) => v.push(0.0),
            Values::Int(v) => v.push(0),
            Values::UInt(v) => v.push(0),
            Values::Bool(b) => b.append(false),
            Values::Str(v) => v.push(Cow::Borrowed("")),
            Values::Tag { keys, .. } => keys.push(0),
        }
    }
}

struct Column<'a> {
    name: Cow<'a, str>,
    column_type: ColumnType,
    first_line: usize,
    values: Values<'a>,
    /// Rows filled so far, with a value or a null.
    len: usize,
    /// Validity of the rows filled so far; `None` while none of them is null.
    valid: Option<BooleanBufferBuilder>,
}

impl Column<'_> {
    /// Fills rows up to `rows` with nulls.
    fn pad_to(&mut self, rows: usize) {
        if self.len >= rows {
            return;
        }
        let len = self.len;
        let valid = self.valid.get_or_insert_with(|| {
            let mut b = BooleanBufferBuilder::new(rows.max(len * 2));
            b.append_n(len, true);
            b
        });
        valid.append_n(rows - len, false);
        for _ in len..rows {
            self.values.put_null();
        }
        self.len = rows;
    }

    fn nulls(&mut self) -> Option<NullBuffer> {
        self.valid.take().map(|mut b| NullBuffer::new(b.finish()))
    }
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
        let row = self.ts.len() - 1;
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
                    values: Values::new(t, self.ts.capacity()),
                    len: 0,
                    valid: None,
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
        if col.len == row + 1 {
            // A repeated key within one line: the last value wins.
            col.values.put(v, true);
        } else {
            col.pad_to(row);
            col.values.put(v, false);
            col.len = row + 1;
            if let Some(valid) = &mut col.valid {
                valid.append(true);
            }
        }
        Ok(())
    }
}

/// Rows the first measurement of a body is sized for before its lines are counted: about
/// one row per 64 bytes of body, at most this many.
const INITIAL_ROWS_MAX: usize = 1 << 16;

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
                    let expected = if tables.is_empty() {
                        (body.len() / 64).min(INITIAL_ROWS_MAX)
                    } else {
                        0
                    };
                    tables.push(TableRows {
                        name: measurement,
                        ts: Vec::with_capacity(expected),
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

/// The Arrow batch of `t`'s rows, its columns in the catalog's order. Takes the values
/// out of `t`: no value is copied except string fields into one buffer.
fn build_batch(t: &mut TableRows<'_>, entry: &TableEntry) -> Result<RecordBatch, QueryError> {
    let rows = t.ts.len();
    let mut fields = vec![];
    let mut arrays: Vec<ArrayRef> = vec![];
    for def in &entry.schema.columns {
        let array: ArrayRef = if def.column_type == ColumnType::Timestamp {
            Arc::new(TimestampNanosecondArray::from(std::mem::take(&mut t.ts)))
        } else {
            let Some(&ci) = t.by_name.get(def.name.as_str()) else {
                continue;
            };
            let col = &mut t.columns[ci];
            col.pad_to(rows);
            finish_column(col)
        };
        fields.push(datafusion::arrow::datatypes::Field::new(
            &def.name,
            array.data_type().clone(),
            def.column_type != ColumnType::Timestamp,
        ));
        arrays.push(array);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| QueryError::new(ErrorKind::Internal, e.to_string()))
}

/// A column as an Arrow array: tags as `Dictionary(Int32, Utf8)`, the form storage keeps.
fn finish_column(c: &mut Column<'_>) -> ArrayRef {
    let nulls = c.nulls();
    match std::mem::replace(&mut c.values, Values::Int(vec![])) {
        Values::Float(v) => Arc::new(Float64Array::new(v.into(), nulls)),
        Values::Int(v) => Arc::new(Int64Array::new(v.into(), nulls)),
        Values::UInt(v) => Arc::new(UInt64Array::new(v.into(), nulls)),
        Values::Bool(mut b) => Arc::new(BooleanArray::new(b.finish(), nulls)),
        Values::Str(v) => {
            let bytes = v.iter().map(|s| s.len()).sum();
            let mut b = StringBuilder::with_capacity(v.len(), bytes);
            for s in &v {
                b.append_value(s);
            }
            let (offsets, data, _) = b.finish().into_parts();
            Arc::new(StringArray::new(offsets, data, nulls))
        }
        Values::Tag { keys, dict, .. } => {
            let bytes = dict.iter().map(|s| s.len()).sum();
            let mut b = StringBuilder::with_capacity(dict.len(), bytes);
            for s in &dict {
                b.append_value(s);
            }
            Arc::new(DictionaryArray::<Int32Type>::new(
                Int32Array::new(keys.into(), nulls),
                Arc::new(b.finish()),
            ))
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
    let mut tables = parse_body(body, precision, now)?;
    let entries = prepare(engine, &tables).await?;
    let batches = tables
        .iter_mut()
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
        if let Response::Rejected(msg) = engine.propose_ddl(ops).await? {
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
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{DataType, Float64Type};

    use super::*;

    /// Column `name` of `t` as its Arrow array, padded to the table's rows.
    fn array(t: &mut TableRows<'_>, name: &str) -> ArrayRef {
        let rows = t.ts.len();
        let col = &mut t.columns[t.by_name[name]];
        col.pad_to(rows);
        finish_column(col)
    }

    fn floats(a: &ArrayRef) -> Vec<Option<f64>> {
        a.as_primitive::<Float64Type>().iter().collect()
    }

    /// A tag column's values per row (it must be dictionary-encoded).
    fn tags(a: &ArrayRef) -> Vec<Option<String>> {
        assert!(
            a.as_dictionary_opt::<Int32Type>().is_some(),
            "{}",
            a.data_type()
        );
        let strings = datafusion::arrow::compute::cast(a, &DataType::Utf8).expect("cast");
        strings
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    }

    #[test]
    fn groups_by_measurement_and_types_columns() {
        let body =
            b"cpu,host=a usage=1.5 10\nmem,host=a free=3i 11\ncpu,host=b usage=2.5,idle=true 12\n";
        let mut tables = parse_body(body, Precision::Nanoseconds, 0).expect("parse");
        assert_eq!(tables.len(), 2);
        assert_eq!(tables[0].name, "cpu");
        assert_eq!(tables[0].ts, vec![10, 12]);
        let idle = array(&mut tables[0], "idle");
        let idle = idle.as_boolean();
        assert!(idle.is_null(0), "idle is set on the second cpu row only");
        assert!(idle.is_valid(1) && idle.value(1));
        let free = array(&mut tables[1], "free");
        assert_eq!(
            free.as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .value(0),
            3
        );
    }

    /// The next-column guess must never put a value in the wrong column: keys in another
    /// order, a key missing, a new key, and another measurement in between.
    #[test]
    fn keys_in_any_order_land_in_their_columns() {
        let body = b"m,a=p x=1 1\nm x=2,y=3 2\nn,a=z v=1 3\nm,b=q y=4,x=5 4\nm,a=r x=6 5\n";
        let mut tables = parse_body(body, Precision::Nanoseconds, 0).expect("parse");
        let m = &mut tables[0];
        assert_eq!(
            floats(&array(m, "x")),
            vec![Some(1.0), Some(2.0), Some(5.0), Some(6.0)]
        );
        assert_eq!(
            floats(&array(m, "y")),
            vec![None, Some(3.0), Some(4.0), None]
        );
        assert_eq!(
            tags(&array(m, "a")),
            vec![Some("p".into()), None, None, Some("r".into())]
        );
        assert_eq!(
            tags(&array(m, "b")),
            vec![None, None, Some("q".into()), None]
        );
        assert_eq!(tables[1].name, "n");
        assert_eq!(tables[1].ts, vec![3]);
    }

    /// Tags are dictionary-encoded as they are read: a value seen again reuses its key, and
    /// a key repeated within a line keeps its last value (for tags and fields alike).
    #[test]
    fn tags_share_dictionary_keys_and_repeated_keys_keep_the_last_value() {
        let body = b"m,s=a x=1,x=2 1\nm,s=b x=3 2\nm,s=a x=4,b=true,b=false 3\n";
        let mut tables = parse_body(body, Precision::Nanoseconds, 0).expect("parse");
        let m = &mut tables[0];
        let s = array(m, "s");
        let d = s.as_dictionary::<Int32Type>();
        assert_eq!(
            d.values().len(),
            2,
            "two distinct values, two dictionary entries"
        );
        assert_eq!(d.keys().values().to_vec(), vec![0, 1, 0]);
        assert_eq!(
            floats(&array(m, "x")),
            vec![Some(2.0), Some(3.0), Some(4.0)]
        );
        let b = array(m, "b");
        let b = b.as_boolean();
        assert!(b.is_null(0) && b.is_null(1) && !b.value(2));
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
        let mut tables = parse_body(body, Precision::Nanoseconds, 0).expect("parse");
        assert_eq!(tables[0].name, "m x");
        assert_eq!(
            tags(&array(&mut tables[0], "host")),
            vec![Some("a b".into())]
        );
        let v = array(&mut tables[0], "v");
        assert_eq!(v.as_string::<i32>().value(0), "q\"z");
    }

    #[test]
    fn ts_is_reserved() {
        let err = parse_body(b"m,ts=x v=1 1\n", Precision::Nanoseconds, 0)
            .err()
            .expect("reserved");
        assert!(err.message.contains("reserved"), "{}", err.message);
    }
}
