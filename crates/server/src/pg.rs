//! The Postgres wire protocol (pgwire 0.42) on `pg_addr`: simple and extended query protocol
//! over the same sessions, engine and errors as HTTP.
//!
//! Each connection gets its own handler holding its [`Session`] (settings, transaction
//! block). Results are encoded from Arrow by [`pg_type`]'s mapping, text or binary as the
//! client asks. Errors carry the SQLSTATE of [`QueryError::sqlstate`]. Authentication is
//! `pg_auth` (see `pgauth`).
//!
//! Limits: `pg_max_connections` authenticated sessions at once (the excess gets FATAL 53300
//! and is closed), connections still authenticating in a pool of their own (`pgconn`),
//! every message checked before it is decoded (`pgframe`); statements per simple query as
//! for HTTP (`MAX_STATEMENTS_PER_REQUEST`).

use std::fmt::Debug;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    SchemaRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions as ArrowFormatOptions};
use futures::{stream, Sink};
use pgwire::api::auth::StartupHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use shoal_query::engine::MAX_STATEMENTS_PER_REQUEST;
use shoal_query::{
    split_statements, ErrorKind, Principal, QueryEngine, QueryError, QueryOutput, Session,
};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use crate::metrics::{NodeMetrics, Protocol, StatusClass};
use crate::pgauth::ShoalStartup;
use crate::pgconn::{serve_connection, Admission};

/// What the accept loop needs: the engine once recovery is done, and the connection limits.
pub struct PgState {
    pub engine: Arc<OnceLock<Arc<QueryEngine>>>,
    /// Statements counted and timed (`shoal_queries_total`, `shoal_query_duration_seconds`).
    pub metrics: Arc<NodeMetrics>,
    /// Session slots and the pool of connections still authenticating (see `pgconn`).
    pub admission: Arc<Admission>,
    /// Authentication, shared by every connection (see `pgauth`).
    pub startup: Arc<ShoalStartup>,
    /// TLS (`certs_dir`): required of every client.
    pub tls: Option<Arc<crate::pgconn::PgTls>>,
    /// Request ids for errors, and the failed-request log (see [`crate::requests`]).
    pub request_ids: Arc<crate::requests::RequestIds>,
}

/// Accepts connections until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    state: Arc<PgState>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let (sock, peer) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "pg accept failed");
                    continue;
                }
            },
        };
        let handler = Arc::new(ConnHandler {
            engine: state.engine.clone(),
            metrics: state.metrics.clone(),
            request_ids: state.request_ids.clone(),
            peer,
            session: Mutex::new(Session::postgres()),
            parser: Arc::new(ShoalParser {
                engine: state.engine.clone(),
            }),
        });
        let handlers = Handlers {
            conn: handler,
            startup: state.startup.connection(),
            request_ids: state.request_ids.clone(),
        };
        tokio::spawn(serve_connection(
            sock,
            peer,
            handlers,
            state.admission.clone(),
            state.tls.clone(),
        ));
    }
}

struct Handlers {
    conn: Arc<ConnHandler>,
    startup: Arc<crate::pgauth::ConnStartup>,
    request_ids: Arc<crate::requests::RequestIds>,
}

impl crate::pgconn::Handlers for Handlers {
    type Extended = ConnHandler;
    fn extended(&self) -> Arc<ConnHandler> {
        self.conn.clone()
    }
    fn scram(&self) -> bool {
        self.startup.is_scram()
    }
    fn request_ids(&self) -> &crate::requests::RequestIds {
        &self.request_ids
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.conn.clone()
    }
    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.conn.clone()
    }
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// One connection: its session and the engine.
struct ConnHandler {
    engine: Arc<OnceLock<Arc<QueryEngine>>>,
    metrics: Arc<NodeMetrics>,
    /// For the request id of an error inside a multi-statement query (the others get
    /// theirs in `pgconn`), and its log line.
    request_ids: Arc<crate::requests::RequestIds>,
    peer: std::net::SocketAddr,
    session: Mutex<Session>,
    parser: Arc<ShoalParser>,
}

fn engine_of(cell: &OnceLock<Arc<QueryEngine>>) -> PgWireResult<Arc<QueryEngine>> {
    cell.get().cloned().ok_or_else(|| {
        user_error(
            "57P03",
            "the database system is starting up (recovering); retry shortly",
        )
    })
}

fn user_error(code: &str, msg: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        msg.into(),
    )))
}

fn to_pg(e: QueryError) -> PgWireError {
    if e.kind == ErrorKind::Internal {
        tracing::error!(error = %e.message, "internal error");
    }
    user_error(e.sqlstate(), e.message)
}

/// The Postgres type a column of `dt` is sent as. Types without a match go as text, rendered
/// by Arrow's formatter.
pub fn pg_type(dt: &DataType) -> Type {
    match dt {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => Type::INT8,
        DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Date32 => Type::DATE,
        _ => Type::TEXT,
    }
}

fn fields(schema: &SchemaRef, format: &Format) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            FieldInfo::new(
                f.name().clone(),
                None,
                None,
                pg_type(f.data_type()),
                format.format_for(i),
            )
        })
        .collect()
}

fn ts_nanos(col: &dyn Array, unit: &TimeUnit, r: usize) -> i64 {
    match unit {
        TimeUnit::Nanosecond => col.as_primitive::<TimestampNanosecondType>().value(r),
        TimeUnit::Microsecond => col
            .as_primitive::<TimestampMicrosecondType>()
            .value(r)
            .saturating_mul(1_000),
        TimeUnit::Millisecond => col
            .as_primitive::<TimestampMillisecondType>()
            .value(r)
            .saturating_mul(1_000_000),
        TimeUnit::Second => col
            .as_primitive::<TimestampSecondType>()
            .value(r)
            .saturating_mul(1_000_000_000),
    }
}

fn encode_cell(
    enc: &mut DataRowEncoder,
    col: &dyn Array,
    text: &ArrayFormatter<'_>,
    r: usize,
) -> PgWireResult<()> {
    if col.is_null(r) {
        return enc.encode_field(&None::<i64>);
    }
    match col.data_type() {
        DataType::Boolean => enc.encode_field(&col.as_boolean().value(r)),
        DataType::Int8 => enc.encode_field(&(col.as_primitive::<Int8Type>().value(r) as i16)),
        DataType::UInt8 => enc.encode_field(&(col.as_primitive::<UInt8Type>().value(r) as i16)),
        DataType::Int16 => enc.encode_field(&col.as_primitive::<Int16Type>().value(r)),
        DataType::UInt16 => enc.encode_field(&(col.as_primitive::<UInt16Type>().value(r) as i32)),
        DataType::Int32 => enc.encode_field(&col.as_primitive::<Int32Type>().value(r)),
        DataType::UInt32 => enc.encode_field(&(col.as_primitive::<UInt32Type>().value(r) as i64)),
        DataType::Int64 => enc.encode_field(&col.as_primitive::<Int64Type>().value(r)),
        DataType::UInt64 => {
            let v = col.as_primitive::<UInt64Type>().value(r);
            let v = i64::try_from(v).map_err(|_| {
                user_error(
                    "22003",
                    format!("unsigned value {v} is out of range for bigint"),
                )
            })?;
            enc.encode_field(&v)
        }
        DataType::Float32 => enc.encode_field(&col.as_primitive::<Float32Type>().value(r)),
        DataType::Float64 => enc.encode_field(&col.as_primitive::<Float64Type>().value(r)),
        DataType::Timestamp(unit, tz) => {
            let utc = chrono::DateTime::<chrono::Utc>::from_timestamp_nanos(ts_nanos(col, unit, r));
            if tz.is_some() {
                enc.encode_field(&utc)
            } else {
                enc.encode_field(&utc.naive_utc())
            }
        }
        DataType::Date32 => {
            let days = col.as_primitive::<Date32Type>().value(r);
            let date = chrono::NaiveDate::from_num_days_from_ce_opt(days + 719_163)
                .ok_or_else(|| user_error("22008", format!("date out of range: {days}")))?;
            enc.encode_field(&date)
        }
        DataType::Utf8 => enc.encode_field(&col.as_string::<i32>().value(r)),
        DataType::LargeUtf8 => enc.encode_field(&col.as_string::<i64>().value(r)),
        DataType::Utf8View => enc.encode_field(&col.as_string_view().value(r)),
        _ => enc.encode_field(&text.value(r).to_string()),
    }
}

fn encode_rows(
    batches: &[RecordBatch],
    schema: Arc<Vec<FieldInfo>>,
) -> PgWireResult<Vec<PgWireResult<pgwire::messages::data::DataRow>>> {
    let mut enc = DataRowEncoder::new(schema);
    let opts = ArrowFormatOptions::default();
    let mut rows = Vec::new();
    for b in batches {
        let formatters = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| user_error("XX000", e.to_string()))?;
        for r in 0..b.num_rows() {
            for (c, f) in b.columns().iter().zip(&formatters) {
                encode_cell(&mut enc, c.as_ref(), f, r)?;
            }
            rows.push(Ok(enc.take_row()));
        }
    }
    Ok(rows)
}

fn response(out: QueryOutput, format: &Format) -> PgWireResult<Response> {
    match out {
        QueryOutput::Rows { schema, batches } => {
            let fields = Arc::new(fields(&schema, format));
            let rows = encode_rows(&batches, fields.clone())?;
            Ok(Response::Query(QueryResponse::new(
                fields,
                stream::iter(rows),
            )))
        }
        QueryOutput::Command { tag, rows } => Ok(match tag.as_str() {
            "BEGIN" => Response::TransactionStart(Tag::new("BEGIN")),
            "COMMIT" | "ROLLBACK" => Response::TransactionEnd(Tag::new(&tag)),
            "INSERT" => {
                Response::Execution(Tag::new("INSERT").with_oid(0).with_rows(rows as usize))
            }
            _ => Response::Execution(Tag::new(&tag)),
        }),
    }
}

impl ConnHandler {
    async fn run(
        &self,
        who: Option<Arc<Principal>>,
        sql: &str,
        params: &[Option<String>],
        format: &Format,
    ) -> PgWireResult<Response> {
        let engine = match engine_of(&self.engine) {
            Ok(engine) => engine,
            Err(e) => {
                // Still recovering: refused before the statement ran.
                self.metrics
                    .refused(Protocol::Postgres, StatusClass::ServerError);
                return Err(e);
            }
        };
        let mut session = self.session.lock().await;
        session.principal = who.map(|p| (*p).clone()).unwrap_or_default();
        let started = std::time::Instant::now();
        let result = engine.run_statement(&mut session, sql, params).await;
        self.metrics
            .statement(Protocol::Postgres, sql, started.elapsed(), result.as_ref());
        response(result.map_err(to_pg)?, format)
    }
}

#[async_trait]
impl SimpleQueryHandler for ConnHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = split_statements(query);
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        if statements.len() > MAX_STATEMENTS_PER_REQUEST {
            return Err(user_error(
                "54000",
                format!("more than {MAX_STATEMENTS_PER_REQUEST} statements in one query"),
            ));
        }
        let mut out = Vec::with_capacity(statements.len());
        for sql in statements {
            match self
                .run(
                    client.session_extensions().get::<Principal>(),
                    sql,
                    &[],
                    &Format::UnifiedText,
                )
                .await
            {
                Ok(r) => out.push(r),
                Err(e) => {
                    // Earlier statements keep their results; the rest of the string is skipped.
                    let mut info = e.into();
                    crate::pgconn::tag_error(&mut info, &self.request_ids, self.peer);
                    out.push(Response::Error(Box::new(info)));
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// A prepared statement: its text, parameter types and result schema (none for commands).
#[derive(Clone, Debug)]
pub struct ShoalStatement {
    sql: String,
    params: Vec<Type>,
    schema: Option<SchemaRef>,
}

struct ShoalParser {
    engine: Arc<OnceLock<Arc<QueryEngine>>>,
}

#[async_trait]
impl QueryParser for ShoalParser {
    type Statement = ShoalStatement;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<ShoalStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let engine = engine_of(&self.engine)?;
        let statements = split_statements(sql);
        let Some(first) = statements.first() else {
            return Ok(None);
        };
        if statements.len() > 1 {
            return Err(user_error(
                "42601",
                "cannot insert multiple commands into a prepared statement",
            ));
        }
        let (ptypes, schema) = engine
            .describe(&Session::postgres(), first)
            .await
            .map_err(to_pg)?;
        let params = ptypes
            .iter()
            .enumerate()
            .map(|(i, t)| match types.get(i).cloned().flatten() {
                Some(given) => given,
                None => t.as_ref().map(pg_type).unwrap_or(Type::TEXT),
            })
            .collect();
        Ok(Some(ShoalStatement {
            sql: first.to_string(),
            params,
            schema,
        }))
    }

    fn get_parameter_types(&self, stmt: &ShoalStatement) -> PgWireResult<Vec<Type>> {
        Ok(stmt.params.clone())
    }

    fn get_result_schema(
        &self,
        stmt: &ShoalStatement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(match &stmt.schema {
            Some(s) => fields(s, format.unwrap_or(&Format::UnifiedText)),
            None => vec![],
        })
    }
}

/// Each parameter as text, whatever format it came in; the engine types it by the plan.
fn decode_params(p: &Portal<ShoalStatement>) -> PgWireResult<Vec<Option<String>>> {
    (0..p.parameter_len())
        .map(|i| {
            if p.parameter_format.is_text(i) {
                return Ok(p.parameters[i]
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned()));
            }
            let ty = p
                .statement
                .parameter_types
                .get(i)
                .cloned()
                .flatten()
                .or_else(|| p.statement.statement.params.get(i).cloned())
                .unwrap_or(Type::TEXT);
            Ok(match ty {
                Type::BOOL => p.parameter::<bool>(i, &ty)?.map(|v| v.to_string()),
                Type::INT2 => p.parameter::<i16>(i, &ty)?.map(|v| v.to_string()),
                Type::INT4 => p.parameter::<i32>(i, &ty)?.map(|v| v.to_string()),
                Type::INT8 => p.parameter::<i64>(i, &ty)?.map(|v| v.to_string()),
                Type::FLOAT4 => p.parameter::<f32>(i, &ty)?.map(|v| v.to_string()),
                Type::FLOAT8 => p.parameter::<f64>(i, &ty)?.map(|v| v.to_string()),
                Type::TIMESTAMP => p
                    .parameter::<chrono::NaiveDateTime>(i, &ty)?
                    .map(|v| v.format("%Y-%m-%dT%H:%M:%S%.f").to_string()),
                Type::TIMESTAMPTZ => p
                    .parameter::<chrono::DateTime<chrono::FixedOffset>>(i, &ty)?
                    .map(|v| v.to_rfc3339()),
                _ => p.parameter::<String>(i, &Type::TEXT)?,
            })
        })
        .collect()
}

#[async_trait]
impl ExtendedQueryHandler for ConnHandler {
    type Statement = ShoalStatement;
    type QueryParser = ShoalParser;

    fn query_parser(&self) -> Arc<ShoalParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<ShoalStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let params = decode_params(portal)?;
        self.run(
            client.session_extensions().get::<Principal>(),
            &portal.statement.statement.sql,
            &params,
            &portal.result_column_format,
        )
        .await
    }
}
