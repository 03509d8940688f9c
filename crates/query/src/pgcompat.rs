//! Functions Postgres clients call on connect or when listing tables (Grafana's PostgreSQL
//! data source calls `current_setting('search_path')`; drivers read `version()`).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, ScalarValue};
use datafusion::logical_expr::{create_udf, ColumnarValue, ScalarUDF, Volatility};
use datafusion::prelude::SessionContext;

use crate::session::SERVER_SETTINGS;

/// What `version()` answers: Postgres-shaped, so clients that parse it are content.
pub fn version_string() -> String {
    format!(
        "PostgreSQL 16.6 (Shoal {}) on {}-linux, compiled by rustc",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    )
}

fn setting(name: &str) -> Option<&'static str> {
    SERVER_SETTINGS
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

fn current_setting() -> ScalarUDF {
    create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| match &args[0] {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(name))) => match setting(name) {
                Some(v) => Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(v.into())))),
                None => exec_err!("unrecognized configuration parameter \"{name}\""),
            },
            ColumnarValue::Scalar(_) => Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None))),
            ColumnarValue::Array(a) => {
                let names = a.as_string::<i32>();
                let out: StringArray = (0..names.len())
                    .map(|i| {
                        (!names.is_null(i))
                            .then(|| setting(names.value(i)))
                            .flatten()
                    })
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
            }
        }),
    )
}

fn version() -> ScalarUDF {
    create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|_: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                version_string(),
            ))))
        }),
    )
}

/// Grafana's PostgreSQL data source finds the schemas on the search path with a subquery
/// over `generate_series(...)` and `string_to_array(...)` in FROM, which DataFusion cannot
/// plan. Shoal's search path is fixed (`public`), so the subquery is replaced by its value.
pub fn rewrite_search_path_subquery(sql: &str) -> Option<String> {
    const TAIL: &str = "string_to_array(current_setting('search_path'),',') s";
    if !sql.contains("current_setting('search_path')") || !sql.contains("trim(s[i])") {
        return None;
    }
    let flat = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::with_capacity(flat.len());
    let mut rest = flat.as_str();
    let mut changed = false;
    while let Some(start) = rest.find("SELECT CASE WHEN trim(s[i])") {
        let Some(end) = rest[start..].find(TAIL) else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push_str("SELECT 'public'");
        rest = &rest[start + end + TAIL.len()..];
        changed = true;
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// Registers the functions (replacing DataFusion's `version()`).
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(current_setting());
    ctx.register_udf(version());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grafana_search_path_subquery_becomes_public() {
        let sql = "SELECT quote_ident(table_name) FROM information_schema.tables WHERE quote_ident(table_schema) IN (
              SELECT
                CASE WHEN trim(s[i]) = '\"$user\"' THEN user ELSE trim(s[i]) END
              FROM
                generate_series(
                  array_lower(string_to_array(current_setting('search_path'),','),1),
                  array_upper(string_to_array(current_setting('search_path'),','),1)
                ) as i,
                string_to_array(current_setting('search_path'),',') s
              ) AND table_type = 'BASE TABLE'";
        let out = rewrite_search_path_subquery(sql).expect("rewritten");
        assert!(
            out.contains("IN ( SELECT 'public' ) AND table_type"),
            "{out}"
        );
        assert!(rewrite_search_path_subquery("SELECT 1").is_none());
    }
}
