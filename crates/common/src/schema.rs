//! The data model: a table has one time column (`ts`, nanoseconds), tag columns (strings
//! that identify a series) and field columns (typed values). One tag is the partition key.
//!
//! This is what group 0's catalog stores; the Arrow mapping lives in `storage`.

use serde::{Deserialize, Serialize};

/// The name of every table's time column.
pub const TIME_COLUMN: &str = "ts";

/// A column's type and role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// The time column: nanoseconds since the epoch, never null.
    Timestamp,
    /// A tag: a string that is part of the series key.
    Tag,
    Float,
    Integer,
    UInteger,
    String,
    Boolean,
}

impl ColumnType {
    /// The name InfluxDB line protocol uses for a field type (error messages name both sides
    /// of a conflict in these words).
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Timestamp => "timestamp",
            ColumnType::Tag => "tag",
            ColumnType::Float => "float",
            ColumnType::Integer => "integer",
            ColumnType::UInteger => "unsigned",
            ColumnType::String => "string",
            ColumnType::Boolean => "boolean",
        }
    }

    pub fn is_field(self) -> bool {
        !matches!(self, ColumnType::Timestamp | ColumnType::Tag)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    pub column_type: ColumnType,
}

/// One table's schema as the catalog holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    pub name: String,
    /// `ts` first, then columns in the order they were added.
    pub columns: Vec<ColumnDef>,
    /// The tag whose value picks the vshard; `None` when the table has no tags (all rows
    /// then hash the empty key).
    pub partition_key: Option<String>,
}

/// Why a schema cannot be built or extended.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error("table {table}: column {column} is {existing}, not {wanted}")]
    TypeConflict {
        table: String,
        column: String,
        existing: &'static str,
        wanted: &'static str,
    },
    #[error("table {table}: partition key {key} is not a tag column")]
    BadPartitionKey { table: String, key: String },
    #[error("table {table}: the time column must be named ts and have type TIMESTAMP")]
    BadTimeColumn { table: String },
    #[error("table {table}: column {column} is declared twice")]
    DuplicateColumn { table: String, column: String },
    #[error("invalid name {name:?}: {reason}")]
    BadName { name: String, reason: &'static str },
}

/// Longest table or column name accepted.
pub const MAX_NAME_BYTES: usize = 255;

/// Checks a table or column name: non-empty, bounded, no control characters.
pub fn validate_name(name: &str) -> Result<(), SchemaError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NAME_BYTES {
        "longer than 255 bytes"
    } else if name.chars().any(char::is_control) {
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(SchemaError::BadName {
        name: name.to_string(),
        reason,
    })
}

impl TableSchema {
    /// Builds a schema from `ts` plus the given columns; the partition key defaults to the tag
    /// `symbol` when present, else the first tag.
    pub fn new(
        name: &str,
        columns: Vec<ColumnDef>,
        partition_key: Option<String>,
    ) -> Result<TableSchema, SchemaError> {
        validate_name(name)?;
        let mut all = vec![ColumnDef {
            name: TIME_COLUMN.to_string(),
            column_type: ColumnType::Timestamp,
        }];
        for c in columns {
            validate_name(&c.name)?;
            if c.name == TIME_COLUMN {
                if c.column_type != ColumnType::Timestamp {
                    return Err(SchemaError::BadTimeColumn {
                        table: name.to_string(),
                    });
                }
                continue;
            }
            if c.column_type == ColumnType::Timestamp {
                return Err(SchemaError::BadTimeColumn {
                    table: name.to_string(),
                });
            }
            if all.iter().any(|e| e.name == c.name) {
                return Err(SchemaError::DuplicateColumn {
                    table: name.to_string(),
                    column: c.name,
                });
            }
            all.push(c);
        }
        let mut schema = TableSchema {
            name: name.to_string(),
            columns: all,
            partition_key: None,
        };
        schema.partition_key = match partition_key {
            Some(key) => {
                if schema.column(&key).map(|c| c.column_type) != Some(ColumnType::Tag) {
                    return Err(SchemaError::BadPartitionKey {
                        table: name.to_string(),
                        key,
                    });
                }
                Some(key)
            }
            None => schema.default_partition_key(),
        };
        Ok(schema)
    }

    fn default_partition_key(&self) -> Option<String> {
        let mut tags = self
            .columns
            .iter()
            .filter(|c| c.column_type == ColumnType::Tag);
        if let Some(sym) = self
            .column("symbol")
            .filter(|c| c.column_type == ColumnType::Tag)
        {
            return Some(sym.name.clone());
        }
        tags.next().map(|c| c.name.clone())
    }

    pub fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Adds `columns` that are not yet present; a column present with another type is a
    /// conflict. Returns whether anything was added. The partition key never changes after
    /// creation, because rows already stored were routed by it.
    pub fn add_columns(&mut self, columns: &[ColumnDef]) -> Result<bool, SchemaError> {
        let mut added = false;
        for c in columns {
            validate_name(&c.name)?;
            match self.column(&c.name) {
                Some(existing) if existing.column_type == c.column_type => {}
                Some(existing) => {
                    return Err(SchemaError::TypeConflict {
                        table: self.name.clone(),
                        column: c.name.clone(),
                        existing: existing.column_type.name(),
                        wanted: c.column_type.name(),
                    })
                }
                None => {
                    if c.column_type == ColumnType::Timestamp {
                        return Err(SchemaError::BadTimeColumn {
                            table: self.name.clone(),
                        });
                    }
                    self.columns.push(c.clone());
                    added = true;
                }
            }
        }
        Ok(added)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, t: ColumnType) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            column_type: t,
        }
    }

    #[test]
    fn partition_key_defaults_to_symbol_then_first_tag() {
        let s = TableSchema::new(
            "t",
            vec![col("side", ColumnType::Tag), col("symbol", ColumnType::Tag)],
            None,
        )
        .expect("schema");
        assert_eq!(s.partition_key.as_deref(), Some("symbol"));
        let s = TableSchema::new(
            "t",
            vec![col("host", ColumnType::Tag), col("v", ColumnType::Float)],
            None,
        )
        .expect("schema");
        assert_eq!(s.partition_key.as_deref(), Some("host"));
        assert_eq!(s.columns[0].name, "ts");
    }

    #[test]
    fn add_columns_detects_conflicts() {
        let mut s = TableSchema::new("t", vec![col("v", ColumnType::Float)], None).expect("schema");
        assert!(s
            .add_columns(&[col("w", ColumnType::Integer)])
            .expect("add"));
        assert!(!s
            .add_columns(&[col("w", ColumnType::Integer)])
            .expect("add"));
        let err = s
            .add_columns(&[col("v", ColumnType::String)])
            .expect_err("conflict");
        assert_eq!(err.to_string(), "table t: column v is float, not string");
    }

    #[test]
    fn bad_partition_key_is_refused() {
        let err = TableSchema::new("t", vec![col("v", ColumnType::Float)], Some("v".into()))
            .expect_err("bad");
        assert!(matches!(err, SchemaError::BadPartitionKey { .. }));
    }
}
