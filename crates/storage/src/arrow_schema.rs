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

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use shoal_common::schema::{ColumnType, TableSchema};

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
