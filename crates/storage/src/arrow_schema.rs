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

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
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

/// The Arrow schema of a table: `ts` is not nullable, every other column is.
pub fn table_arrow_schema(table: &TableSchema) -> SchemaRef {
    let fields: Vec<Field> = table
        .columns
        .iter()
        .map(|c| {
            let role = match c.column_type {
                ColumnType::Timestamp => "time",
                ColumnType::Tag => "tag",
                _ => "field",
            };
            Field::new(
                &c.name,
                arrow_type(c.column_type),
                c.column_type != ColumnType::Timestamp,
            )
            .with_metadata([(ROLE_KEY.to_string(), role.to_string())].into())
        })
        .collect();
    Arc::new(Schema::new(fields))
}
