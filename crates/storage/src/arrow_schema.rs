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

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
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
