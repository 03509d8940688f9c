//! What SQL may touch besides Shoal's own tables: nothing on the server's file system unless
//! an operator allowed it, and no DataFusion-only catalog objects.
//!
//! DataFusion, left to itself, runs `COPY (SELECT …) TO '/any/path'` (a remote file write for
//! any client of `POST /v1/sql`) and `CREATE EXTERNAL TABLE … LOCATION '/etc/…'` (a remote file
//! read). Every plan is checked here after planning and before it runs:
//!
//! - `COPY … TO` is refused unless `sql_file_dir` is set, and then only writes under that
//!   directory (a relative path is taken relative to it; `..` is refused).
//! - `CREATE EXTERNAL TABLE` is always refused: its table would live in one node's memory
//!   only, and it reads server files.
//! - Views, in-memory tables, schemas, catalogs and functions created through DataFusion are
//!   refused: they would live in the memory of the one node that ran the statement, shared
//!   by every client of that node and lost at restart. Shoal's tables come from
//!   `CREATE TABLE` (group 0).
//!
//! The table functions DataFusion and pg_catalog register (`generate_series`, `range`,
//! `pg_get_keywords`) read no files, and URL tables (`SELECT * FROM 'file.csv'`) are not
//! enabled.

use std::path::{Component, Path, PathBuf};

use datafusion::logical_expr::{DdlStatement, LogicalPlan};

use crate::error::{ErrorKind, QueryError, Result};

/// Where SQL may read and write server files; `None`: nowhere (the default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileAccess {
    pub dir: Option<PathBuf>,
}

fn forbidden(message: String) -> QueryError {
    QueryError::new(ErrorKind::Forbidden, message)
}

/// Checks `plan` and returns it, with a `COPY` target made absolute under `sql_file_dir`.
pub fn check_plan(plan: LogicalPlan, files: &FileAccess) -> Result<LogicalPlan> {
    match plan {
        LogicalPlan::Copy(mut copy) => {
            copy.output_url = allowed_path(&copy.output_url, files)?;
            Ok(LogicalPlan::Copy(copy))
        }
        LogicalPlan::Ddl(ddl) => Err(match ddl {
            DdlStatement::CreateExternalTable(t) => forbidden(format!(
                "CREATE EXTERNAL TABLE {} is not allowed: it reads files on the server and its \
                 table would exist on one node only; create tables with CREATE TABLE and load \
                 them with INSERT or line protocol",
                t.name
            )),
            other => QueryError::new(
                ErrorKind::NotSupported,
                format!(
                    "{} is not supported: it would exist in one node's memory only; Shoal's \
                     tables are created with CREATE TABLE",
                    ddl_name(&other)
                ),
            ),
        }),
        other => Ok(other),
    }
}

fn ddl_name(ddl: &DdlStatement) -> &'static str {
    match ddl {
        DdlStatement::CreateExternalTable(_) => "CREATE EXTERNAL TABLE",
        DdlStatement::CreateMemoryTable(_) => "CREATE TABLE … AS",
        DdlStatement::CreateView(_) => "CREATE VIEW",
        DdlStatement::CreateCatalogSchema(_) => "CREATE SCHEMA",
        DdlStatement::CreateCatalog(_) => "CREATE DATABASE",
        DdlStatement::CreateIndex(_) => "CREATE INDEX",
        DdlStatement::DropTable(_) => "DROP TABLE of a non-Shoal table",
        DdlStatement::DropView(_) => "DROP VIEW",
        DdlStatement::DropCatalogSchema(_) => "DROP SCHEMA",
        DdlStatement::CreateFunction(_) => "CREATE FUNCTION",
        DdlStatement::DropFunction(_) => "DROP FUNCTION",
    }
}

/// The absolute path under `sql_file_dir` that `target` names, or why it may not be used.
fn allowed_path(target: &str, files: &FileAccess) -> Result<String> {
    let Some(dir) = &files.dir else {
        return Err(forbidden(format!(
            "COPY … TO '{target}' is not allowed: SQL may not write files on the server \
             (an operator can allow it under one directory with sql_file_dir)"
        )));
    };
    if target.contains("://") {
        return Err(forbidden(format!(
            "COPY … TO '{target}': only plain paths under sql_file_dir are allowed"
        )));
    }
    let rel = Path::new(target);
    let rel = rel.strip_prefix(dir).unwrap_or(rel);
    let escapes = rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if escapes || rel.as_os_str().is_empty() {
        return Err(forbidden(format!(
            "COPY … TO '{target}': the path must be a file under sql_file_dir ({}), without '..'",
            dir.display()
        )));
    }
    let full = dir.join(rel);
    // A symbolic link inside the directory must not lead out of it.
    if let (Ok(root), Some(parent)) = (dir.canonicalize(), full.parent()) {
        if let Ok(real) = parent.canonicalize() {
            if !real.starts_with(&root) {
                return Err(forbidden(format!(
                    "COPY … TO '{target}' leads out of sql_file_dir through a symbolic link"
                )));
            }
        }
    }
    Ok(full.to_string_lossy().into_owned())
}

/// Bounds on what DDL may add to the catalog, checked on the node before anything is
/// proposed to group 0 (a request over a bound changes nothing). The catalog is replicated
/// to every node and held in memory, so its size is every node's cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogLimits {
    /// `max_tables`: tables in the cluster.
    pub max_tables: usize,
    /// `max_columns_per_table`.
    pub max_columns_per_table: usize,
    /// `max_new_tables_per_request`: tables one request (a line-protocol body, a
    /// transaction block) may create.
    pub max_new_tables_per_request: usize,
}

impl Default for CatalogLimits {
    fn default() -> Self {
        CatalogLimits {
            max_tables: 10_000,
            max_columns_per_table: 1_024,
            max_new_tables_per_request: 1_000,
        }
    }
}

/// Checks that `ops` applied to `catalog` stay within `limits`. Ops the catalog would
/// refuse anyway (a type conflict, a duplicate) are left for group 0 to refuse.
pub fn check_ddl_limits(
    catalog: &shoal_consensus::Catalog,
    ops: &[shoal_consensus::DdlOp],
    limits: &CatalogLimits,
) -> Result<()> {
    use shoal_consensus::DdlOp;
    let too_large =
        |msg: String, code: &'static str| QueryError::new(ErrorKind::TooLarge, msg).with_code(code);
    let new_tables: std::collections::BTreeSet<&str> = ops
        .iter()
        .filter_map(|op| match op {
            DdlOp::CreateTable { schema, .. } | DdlOp::EnsureTable { schema } => {
                (!catalog.tables.contains_key(&schema.name)).then_some(schema.name.as_str())
            }
            _ => None,
        })
        .collect();
    if new_tables.len() > limits.max_new_tables_per_request {
        return Err(too_large(
            format!(
                "one request may create at most {} tables (max_new_tables_per_request); this one creates {}",
                limits.max_new_tables_per_request,
                new_tables.len()
            ),
            "54000",
        ));
    }
    if !new_tables.is_empty() && catalog.tables.len() + new_tables.len() > limits.max_tables {
        return Err(too_large(
            format!(
                "the cluster may hold at most {} tables (max_tables); it holds {} and this request adds {}",
                limits.max_tables,
                catalog.tables.len(),
                new_tables.len()
            ),
            "54000",
        ));
    }
    let Ok((after, _)) = catalog.apply_ddl(ops) else {
        return Ok(());
    };
    for op in ops {
        let name = match op {
            DdlOp::CreateTable { schema, .. } | DdlOp::EnsureTable { schema } => &schema.name,
            DdlOp::AddColumns { table, .. } => table,
            DdlOp::DropTable { .. } => continue,
        };
        if let Some(t) = after.tables.get(name) {
            if t.schema.columns.len() > limits.max_columns_per_table {
                return Err(too_large(
                    format!(
                        "table {name} would have {} columns; the limit is {} (max_columns_per_table)",
                        t.schema.columns.len(),
                        limits.max_columns_per_table
                    ),
                    "54011",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(dir: Option<&str>) -> FileAccess {
        FileAccess {
            dir: dir.map(PathBuf::from),
        }
    }

    fn table(name: &str, columns: usize) -> shoal_consensus::DdlOp {
        use shoal_common::schema::{ColumnDef, ColumnType, TableSchema};
        let cols = (0..columns)
            .map(|i| ColumnDef {
                name: format!("c{i}"),
                column_type: ColumnType::Float,
            })
            .collect();
        shoal_consensus::DdlOp::EnsureTable {
            schema: TableSchema::new(name, cols, None).expect("schema"),
        }
    }

    #[test]
    fn ddl_past_a_catalog_limit_is_refused_whole() {
        let limits = CatalogLimits {
            max_tables: 5,
            max_columns_per_table: 4,
            max_new_tables_per_request: 3,
        };
        let empty = shoal_consensus::Catalog::default();
        let three: Vec<_> = (0..3).map(|i| table(&format!("t{i}"), 2)).collect();
        assert!(check_ddl_limits(&empty, &three, &limits).is_ok());
        let four: Vec<_> = (0..4).map(|i| table(&format!("t{i}"), 2)).collect();
        let e = check_ddl_limits(&empty, &four, &limits).expect_err("per request");
        assert!(
            e.message.contains("max_new_tables_per_request"),
            "{}",
            e.message
        );
        assert_eq!(e.sqlstate(), "54000");
        let (full, _) = empty.apply_ddl(&three).expect("apply");
        let more: Vec<_> = (3..6).map(|i| table(&format!("t{i}"), 2)).collect();
        let e = check_ddl_limits(&full, &more, &limits).expect_err("per cluster");
        assert!(e.message.contains("max_tables"), "{}", e.message);
        // Existing tables do not count as new; a table too wide is refused.
        assert!(check_ddl_limits(&full, &three, &limits).is_ok());
        let e = check_ddl_limits(&full, &[table("t0", 5)], &limits).expect_err("columns");
        assert_eq!(e.sqlstate(), "54011");
    }

    #[test]
    fn copy_is_refused_without_a_directory() {
        let e = allowed_path("/tmp/x.csv", &access(None)).expect_err("refused");
        assert_eq!(e.kind, ErrorKind::Forbidden);
        assert_eq!(e.sqlstate(), "42501");
        assert!(e.message.contains("sql_file_dir"), "{}", e.message);
    }

    #[test]
    fn copy_stays_under_the_directory() {
        let a = access(Some("/srv/export"));
        assert_eq!(
            allowed_path("out/x.csv", &a).expect("relative"),
            "/srv/export/out/x.csv"
        );
        assert_eq!(
            allowed_path("/srv/export/x.parquet", &a).expect("absolute inside"),
            "/srv/export/x.parquet"
        );
        for bad in [
            "/etc/passwd",
            "../x.csv",
            "/srv/export/../x",
            "s3://bucket/x",
            "",
        ] {
            assert!(allowed_path(bad, &a).is_err(), "{bad} must be refused");
        }
    }
}
