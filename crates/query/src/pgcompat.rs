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

/// Registers the functions (replacing DataFusion's `version()`).
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(current_setting());
    ctx.register_udf(version());
}
