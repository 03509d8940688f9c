//! SQL DDL that Shoal executes itself (through group 0) instead of handing it to DataFusion.
//!
//! `CREATE TABLE t (ts TIMESTAMP, symbol VARCHAR, price DOUBLE, PRIMARY KEY (symbol))
//! [WITH (partition_key = 'symbol')]`: the string columns named in `PRIMARY KEY` are tags (the
//! series key); `ts` is the time column and must be present; the partition key defaults to
//! the tag `symbol`, else the first tag.

use datafusion::sql::sqlparser::ast::{
    AlterTable, AlterTableOperation, CreateTable, CreateTableOptions, Expr as SqlExpr, ObjectType,
    SqlOption, Statement, TableConstraint, Value,
};
use shoal_common::schema::{ColumnDef, ColumnType, TableSchema, TIME_COLUMN};
use shoal_consensus::DdlOp;

use crate::error::{ErrorKind, QueryError, Result};

/// The DDL operation a statement maps to, or `None` when DataFusion should run it.
pub fn ddl_op(stmt: &Statement) -> Result<Option<DdlOp>> {
    match stmt {
        Statement::CreateTable(ct) => create_table(ct).map(Some),
        Statement::Drop {
            object_type: ObjectType::Table,
            if_exists,
            names,
            ..
        } => {
            if names.len() != 1 {
                return Err(QueryError::new(
                    ErrorKind::BadInput,
                    "DROP TABLE takes one table at a time",
                ));
            }
            Ok(Some(DdlOp::DropTable {
                name: object_name(&names[0].to_string()),
                if_exists: *if_exists,
            }))
        }
        Statement::AlterTable(at) => alter_table(at).map(Some),
        _ => Ok(None),
    }
}

/// The command tag a DDL operation answers with.
pub fn ddl_tag(op: &DdlOp) -> &'static str {
    match op {
        DdlOp::CreateTable { .. } | DdlOp::EnsureTable { .. } => "CREATE TABLE",
        DdlOp::AddColumns { .. } => "ALTER TABLE",
        DdlOp::DropTable { .. } => "DROP TABLE",
    }
}

/// `ALTER TABLE t ADD [COLUMN] [IF NOT EXISTS] c TYPE [, ADD …]`: new field columns.
fn alter_table(at: &AlterTable) -> Result<DdlOp> {
    let table = object_name(&at.name.to_string());
    let mut columns = vec![];
    let mut all_if_not_exists = true;
    for op in &at.operations {
        match op {
            AlterTableOperation::AddColumn {
                if_not_exists,
                column_def,
                ..
            } => {
                let name = column_def.name.value.clone();
                let column_type = column_type(&column_def.data_type.to_string(), false, &name)?;
                if column_type == ColumnType::Timestamp {
                    return Err(QueryError::bad_input(format!(
                        "column {name}: a table has one time column, ts"
                    )));
                }
                all_if_not_exists &= *if_not_exists;
                columns.push(ColumnDef { name, column_type });
            }
            other => {
                return Err(QueryError::new(
                    ErrorKind::NotSupported,
                    format!("ALTER TABLE … {other} is not supported; supported: ADD COLUMN"),
                ))
            }
        }
    }
    Ok(DdlOp::AddColumns {
        table,
        columns,
        if_not_exists: all_if_not_exists,
    })
}

/// Unquotes a single-part name (`"Trades"` → `Trades`, `trades` → `trades`).
pub fn object_name(name: &str) -> String {
    let n = name.trim();
    if n.len() >= 2 && n.starts_with('"') && n.ends_with('"') {
        n[1..n.len() - 1].replace("\"\"", "\"")
    } else {
        n.to_string()
    }
}

fn column_type(sql_type: &str, is_tag: bool, name: &str) -> Result<ColumnType> {
    let t = sql_type.to_ascii_uppercase();
    let base = t.split('(').next().unwrap_or("").trim().to_string();
    let ct = match base.as_str() {
        _ if base.starts_with("TIMESTAMP") => ColumnType::Timestamp,
        "DOUBLE" | "DOUBLE PRECISION" | "FLOAT" | "FLOAT8" | "FLOAT64" | "REAL" | "FLOAT4" | "DECIMAL" | "NUMERIC" => {
            ColumnType::Float
        }
        "BIGINT" | "INT" | "INTEGER" | "INT8" | "INT4" | "INT64" | "SMALLINT" | "TINYINT" => ColumnType::Integer,
        "BIGINT UNSIGNED" | "UBIGINT" | "UINT64" | "INT UNSIGNED" | "INTEGER UNSIGNED" => ColumnType::UInteger,
        "VARCHAR" | "TEXT" | "STRING" | "CHAR" | "CHARACTER VARYING" | "CHARACTER" | "UTF8" => {
            if is_tag {
                ColumnType::Tag
            } else {
                ColumnType::String
            }
        }
        "BOOLEAN" | "BOOL" => ColumnType::Boolean,
        _ => {
            return Err(QueryError::bad_input(format!(
                "column {name}: type {sql_type} is not supported (use TIMESTAMP, DOUBLE, BIGINT, BIGINT UNSIGNED, VARCHAR or BOOLEAN)"
            )))
        }
    };
    if is_tag && ct != ColumnType::Tag {
        return Err(QueryError::bad_input(format!(
            "column {name}: a PRIMARY KEY (tag) column must be VARCHAR"
        )));
    }
    Ok(ct)
}

fn create_table(ct: &CreateTable) -> Result<DdlOp> {
    if ct.query.is_some() || ct.external || ct.like.is_some() {
        return Err(QueryError::new(
            ErrorKind::BadInput,
            "CREATE TABLE AS / LIKE / EXTERNAL is not supported",
        ));
    }
    let name = object_name(&ct.name.to_string());
    let mut tags: Vec<String> = vec![];
    for c in &ct.constraints {
        if let TableConstraint::PrimaryKey(pk) = c {
            for ic in &pk.columns {
                let col = object_name(&ic.column.expr.to_string());
                if col != TIME_COLUMN {
                    tags.push(col);
                }
            }
        }
    }
    let mut columns = vec![];
    let mut has_ts = false;
    for c in &ct.columns {
        let cname = c.name.value.clone();
        let ctype = column_type(&c.data_type.to_string(), tags.contains(&cname), &cname)?;
        if cname == TIME_COLUMN {
            has_ts = true;
        }
        columns.push(ColumnDef {
            name: cname,
            column_type: ctype,
        });
    }
    if !has_ts {
        return Err(QueryError::bad_input(format!(
            "table {name}: a column `ts TIMESTAMP` (the time column) is required"
        )));
    }
    for t in &tags {
        if !columns.iter().any(|c| &c.name == t) {
            return Err(QueryError::bad_input(format!(
                "table {name}: PRIMARY KEY names unknown column {t}"
            )));
        }
    }
    let mut partition_key = None;
    let options: &[SqlOption] = match &ct.table_options {
        CreateTableOptions::With(o)
        | CreateTableOptions::Options(o)
        | CreateTableOptions::Plain(o) => o,
        _ => &[],
    };
    for o in options {
        match o {
            SqlOption::KeyValue { key, value }
                if key.value.eq_ignore_ascii_case("partition_key") =>
            {
                partition_key = Some(match value {
                    SqlExpr::Value(v) => match &v.value {
                        Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                        other => other.to_string(),
                    },
                    other => object_name(&other.to_string()),
                });
            }
            other => {
                return Err(QueryError::bad_input(format!(
                    "unknown table option {other}; supported: partition_key"
                )))
            }
        }
    }
    let schema = TableSchema::new(&name, columns, partition_key)
        .map_err(|e| QueryError::bad_input(e.to_string()))?;
    Ok(DdlOp::CreateTable {
        schema,
        if_not_exists: ct.if_not_exists,
    })
}
