//! The mapping from Shoal's column types to Arrow types. It is also the Parquet schema.
//!
//! | Shoal      | Arrow                       |
//! |------------|-----------------------------|
//! | timestamp  | Timestamp(Nanosecond, None) |
//! | tag        | Utf8 (nullable)             |
//! | float      | Float64                     |
//! | integer    | Int64                       |
//! | unsigned   | UInt64                      |
//! | string     | Utf8                        |
//! | boolean    | Boolean                     |
//!
//! Inside storage, tags are held dictionary-encoded ([`tag_storage_type`]) once they leave
//! the write path: merged hot chunks and Parquet parts carry `Dictionary(Int32, Utf8)`, so a
//! scan that groups or filters by a tag works on small integer keys and never materialises
//! the strings. Scans hand DataFusion the logical type (`Utf8`) unless they ask for the
//! stored form ([`to_logical`] casts back).

use std::sync::Arc;

use std::collections::HashMap;

use arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, Int32Array, RecordBatch, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use shoal_common::schema::{ColumnType, TableSchema};

/// How a tag column is stored once merged or flushed: `Dictionary(Int32, Utf8)`.
pub fn tag_storage_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// Whether a field is a tag (by its role metadata).
pub fn is_tag(field: &Field) -> bool {
    field.metadata().get(ROLE_KEY).map(String::as_str) == Some("tag")
}

/// `field` as storage holds it: tags dictionary-encoded, everything else unchanged.
pub fn storage_field(field: &Field) -> Field {
    if is_tag(field) && field.data_type() == &DataType::Utf8 {
        field.clone().with_data_type(tag_storage_type())
    } else {
        field.clone()
    }
}

/// Casts the tag columns of `batch` to [`tag_storage_type`] (a no-op for columns already
/// encoded, and for batches without role metadata).
pub fn to_storage(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    if !schema
        .fields()
        .iter()
        .any(|f| is_tag(f) && f.data_type() == &DataType::Utf8)
    {
        return Ok(batch.clone());
    }
    let fields: Vec<Field> = schema.fields().iter().map(|f| storage_field(f)).collect();
    let columns = batch
        .columns()
        .iter()
        .zip(&fields)
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                arrow::compute::cast(c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    RecordBatch::try_new(schema, columns)
}

/// `dict` with a dictionary of only the values its rows use, in order of first use. A part
/// cut from a bigger batch (by `take`) keeps the whole dictionary, and batches concatenated
/// by Arrow keep every batch's, so one value may also sit under several keys: with
/// `merge_repeats` those become one entry (a hash of each used value), without it they stay
/// as they are (for dictionaries known to hold each value once). Dictionaries with null
/// values are returned as they are.
pub fn compact_dictionary(
    dict: &DictionaryArray<Int32Type>,
    merge_repeats: bool,
) -> Result<DictionaryArray<Int32Type>, ArrowError> {
    let Some(values) = dict.values().as_string_opt::<i32>() else {
        return Ok(dict.clone());
    };
    if values.null_count() > 0 {
        return Ok(dict.clone());
    }
    let keys = dict.keys();
    const UNSEEN: i32 = -1;
    let mut remap = vec![UNSEEN; values.len()];
    let mut first_key: HashMap<&str, i32> = HashMap::new();
    let mut next_key = 0i32;
    let mut out_values = StringBuilder::new();
    let mut new_keys = Vec::with_capacity(keys.len());
    for (row, &k) in keys.values().iter().enumerate() {
        let Some(slot) = usize::try_from(k).ok().filter(|&k| k < remap.len()) else {
            // Only a null row may hold a key outside the dictionary.
            new_keys.push(0);
            continue;
        };
        if keys.is_null(row) {
            new_keys.push(0);
            continue;
        }
        if remap[slot] == UNSEEN {
            let v = values.value(slot);
            if merge_repeats {
                let next = first_key.len() as i32;
                remap[slot] = *first_key.entry(v).or_insert_with(|| {
                    out_values.append_value(v);
                    next
                });
            } else {
                remap[slot] = next_key;
                next_key += 1;
                out_values.append_value(v);
            }
        }
        new_keys.push(remap[slot]);
    }
    DictionaryArray::try_new(
        Int32Array::new(new_keys.into(), keys.nulls().cloned()),
        Arc::new(out_values.finish()),
    )
}

/// [`compact_dictionary`] applied to every `Dictionary(Int32, Utf8)` column of `batch`.
pub fn compact_dictionaries(
    batch: &RecordBatch,
    merge_repeats: bool,
) -> Result<RecordBatch, ArrowError> {
    if !batch
        .columns()
        .iter()
        .any(|c| c.as_dictionary_opt::<Int32Type>().is_some())
    {
        return Ok(batch.clone());
    }
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.as_dictionary_opt::<Int32Type>() {
            Some(d) => compact_dictionary(d, merge_repeats).map(|d| Arc::new(d) as ArrayRef),
            None => Ok(c.clone()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(batch.schema(), columns)
}

/// Casts every column of `batch` whose type differs from `schema`'s field of the same
/// position back to that type (dictionary tags to `Utf8`). `batch` must already have
/// `schema`'s columns in order.
pub fn to_logical(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                arrow::compute::cast(c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}

/// Field metadata key that marks a column's Shoal role (`time`, `tag`, `field`).
pub const ROLE_KEY: &str = "shoal.role";

pub fn arrow_type(t: ColumnType) -> DataType {
    match t {
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Nanosecond, None),
        ColumnType::Tag | ColumnType::String => DataType::Utf8,
        ColumnType::Float => DataType::Float64,
        ColumnType::Integer => DataType::Int64,
        ColumnType::UInteger => DataType::UInt64,
        ColumnType::Boolean => DataType::Boolean,
    }
}

fn role(t: ColumnType) -> &'static str {
    match t {
        ColumnType::Timestamp => "time",
        ColumnType::Tag => "tag",
        _ => "field",
    }
}

/// The Arrow schema of a table: `ts` is not nullable, every other column is.
pub fn table_arrow_schema(table: &TableSchema) -> SchemaRef {
    let fields: Vec<Field> = table
        .columns
        .iter()
        .map(|c| {
            Field::new(
                &c.name,
                arrow_type(c.column_type),
                c.column_type != ColumnType::Timestamp,
            )
            .with_metadata([(ROLE_KEY.to_string(), role(c.column_type).to_string())].into())
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Gives a batch bound for storage the role of each column (so repeated points can be told
/// apart, see `dedup`) and the partition key (so flushes sort by it).
pub fn annotate_batch(table: &TableSchema, batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let mut meta = f.metadata().clone();
            if let Some(c) = table.column(f.name()) {
                meta.insert(ROLE_KEY.to_string(), role(c.column_type).to_string());
            }
            f.as_ref().clone().with_metadata(meta)
        })
        .collect();
    let mut meta = schema.metadata().clone();
    if let Some(pk) = &table.partition_key {
        meta.insert(crate::shard::PARTITION_KEY_META.to_string(), pk.clone());
    }
    let annotated = Arc::new(Schema::new_with_metadata(fields, meta));
    if annotated == schema {
        return Ok(batch.clone());
    }
    RecordBatch::try_new(annotated, batch.columns().to_vec())
}

#[cfg(test)]
mod tests {
    use arrow::array::UInt32Array;
    use arrow::compute::{concat, take};

    use super::*;

    fn dict(values: &[&str], keys: Vec<Option<i32>>) -> DictionaryArray<Int32Type> {
        DictionaryArray::try_new(
            Int32Array::from(keys),
            Arc::new(arrow::array::StringArray::from(values.to_vec())),
        )
        .expect("valid dictionary")
    }

    /// Every row's value, read through the dictionary.
    fn strings(d: &DictionaryArray<Int32Type>) -> Vec<Option<String>> {
        let values = d.values().as_string::<i32>();
        (0..d.len())
            .map(|i| {
                d.is_valid(i)
                    .then(|| values.value(d.keys().value(i) as usize).to_string())
            })
            .collect()
    }

    #[test]
    fn compacting_keeps_every_row_and_only_the_values_used() {
        let d = dict(&["a", "b", "c", "d"], vec![Some(0), Some(2), None, Some(2)]);
        let part = take(&d, &UInt32Array::from(vec![1, 2, 3]), None).expect("take");
        let part = part.as_dictionary::<Int32Type>();
        assert_eq!(part.values().len(), 4, "take keeps the whole dictionary");
        let c = compact_dictionary(part, false).expect("compact");
        assert_eq!(strings(&c), strings(part));
        assert_eq!(c.values().len(), 1, "only \"c\" is used");
    }

    #[test]
    fn compacting_merges_values_repeated_under_several_keys() {
        let a = dict(&["x", "y"], vec![Some(0), Some(1)]);
        let b = dict(&["y", "x"], vec![Some(0), Some(1), Some(0)]);
        let both = concat(&[&a, &b]).expect("concat");
        let both = both.as_dictionary::<Int32Type>();
        let kept = compact_dictionary(both, false).expect("compact");
        assert_eq!(strings(&kept), strings(both));
        assert_eq!(kept.values().len(), 4, "without merging, repeats stay");
        let c = compact_dictionary(both, true).expect("compact");
        assert_eq!(strings(&c), strings(both));
        assert_eq!(c.values().len(), 2);
        assert_eq!(c.keys().values().to_vec(), vec![0, 1, 1, 0, 1]);
    }
}
