//! The HTTP API. Every handler maps errors to statuses through [`status_of`], the one place
//! that decides what a client sees for each kind of failure.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/sql` | SQL (text body or `{"sql": …}`); `?format=json|csv|jsonl|arrow`, `?read_consistency=` |
//! | `POST /write` | InfluxDB v1 line protocol (`?db=`, `?precision=n|u|ms|s|m|h`) |
//! | `POST /api/v2/write` | InfluxDB v2 line protocol (`?bucket=`, `?precision=ns|us|ms|s`) |
//! | `GET /health/live` | 200 while the process runs |
//! | `GET /health/ready` | 200 once recovery finished and the node serves, else 503 (also while draining) |
//! | `GET /metrics` | Prometheus metrics, text format (see [`crate::metrics`]) |
//! | `GET /`, `GET /console/*` | the web console's page, script and style sheet (see [`crate::console`]) |
//!
//! `/health/*`, `/metrics` and the console's files answer without authentication (they
//! carry no data and no secret, and the metrics' labels are bounded); every other route
//! here goes through the gate.
//!
//! The admin routes (`/admin/v1/...`, `POST /health/drain`) are in [`crate::admin`].

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use shoal_lineproto::Precision;
use shoal_query::{
    ErrorKind, Principal, QueryEngine, QueryError, QueryOptions, QueryOutput, ReadConsistency,
};
use tokio::sync::Semaphore;

use crate::format::{self, Format};
use crate::ingest;
use crate::metrics::{NodeMetrics, Protocol, StatusClass};

pub struct AppState {
    pub engine: OnceLock<Arc<QueryEngine>>,
    pub draining: AtomicBool,
    pub max_body_bytes: u64,
    /// Bounds the requests worked on at once (`http_max_concurrent_requests`).
    pub permits: Arc<Semaphore>,
    /// Cluster readiness (group 0 caught up, node registered); `Err` says what is missing.
    pub readiness: OnceLock<Arc<dyn Fn() -> Result<(), String> + Send + Sync>>,
    /// Who a request comes from (see [`crate::gate`]).
    pub gate: Arc<crate::gate::Gate>,
    /// This node's metrics (`GET /metrics`).
    pub metrics: Arc<NodeMetrics>,
    /// Request ids and the failed-request log (see [`crate::requests`]).
    pub request_ids: Arc<crate::requests::RequestIds>,
}

/// A failed response's error message, for its log line (see [`tag_request`]).
#[derive(Clone)]
pub struct ErrorMessage(pub String);

/// The outermost layer of every route: gives the request its id (the client's
/// `X-Request-Id` when usable), returns it in `X-Request-Id`, and writes the one log line
/// of a request that failed (status 400 and up).
pub async fn tag_request(
    State(st): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let sent = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok());
    let id = st.request_ids.from_client(sent);
    let what = format!("{} {}", req.method(), req.uri().path());
    let mut r = next.run(req).await;
    if let Ok(v) = header::HeaderValue::from_str(&id) {
        r.headers_mut().insert(REQUEST_ID, v);
    }
    let status = r.status();
    if status.is_client_error() || status.is_server_error() {
        let error = r.extensions().get::<ErrorMessage>().map(|m| m.0.as_str());
        st.request_ids.failed(&crate::requests::Failure {
            protocol: "http",
            request_id: &id,
            code: status.as_str(),
            what: &what,
            error: error.unwrap_or(status.canonical_reason().unwrap_or("")),
            server_side: status.is_server_error(),
        });
    }
    r
}

/// `app` (this module's routes and the admin API) with [`tag_request`] around all of it.
pub fn with_request_ids(state: Arc<AppState>, app: Router) -> Router {
    app.layer(axum::middleware::from_fn_with_state(state, tag_request))
}

/// The header a request id travels in, both ways.
pub const REQUEST_ID: &str = "x-request-id";

pub fn router(state: Arc<AppState>) -> Router {
    // Bodies are limited by the extractor before they are buffered; gzip bodies again after
    // decompression.
    let limit = usize::try_from(state.max_body_bytes).unwrap_or(usize::MAX);
    Router::new()
        .merge(crate::console::router::<Arc<AppState>>())
        .route("/health/live", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(
            Router::new()
                .route("/v1/sql", post(sql))
                .route("/write", post(write_v1))
                .route("/api/v2/write", post(write_v2))
                // Every route above knows who calls it; one added here is covered too.
                .route_layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    authenticate,
                )),
        )
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Resolves the caller's [`Principal`] (a request extension for the handler), or answers
/// 401 (with `WWW-Authenticate`, unless a script asked: see [`wants_challenge`]) / 429 for
/// a caller over its failed-login budget.
async fn authenticate(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let challenge = wants_challenge(req.headers());
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let blocked = st.gate.is_blocked(peer.ip());
    match st.gate.http(authorization, req.uri().query(), peer.ip()) {
        Ok(who) => {
            req.extensions_mut().insert(who);
            next.run(req).await
        }
        Err(e) => {
            let mut r = error_response(&e);
            if blocked {
                *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    header::HeaderValue::from(crate::gate::AUTH_FAILURE_WINDOW_MS / 1000),
                );
            } else if r.status() == StatusCode::UNAUTHORIZED && challenge {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Basic realm=\"shoal\", charset=\"UTF-8\""),
                );
            }
            r
        }
    }
}

/// Whether a 401 should carry `WWW-Authenticate: Basic`. Not for a request that says it
/// comes from a script (`X-Requested-With`, as the web console sends): on that challenge a
/// browser shows its own login dialog over the page's login form.
fn wants_challenge(headers: &HeaderMap) -> bool {
    !headers.contains_key("x-requested-with")
}

/// The HTTP status for each kind of error.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadInput
        | ErrorKind::NotFound
        | ErrorKind::TxAborted
        | ErrorKind::NotSupported => StatusCode::BAD_REQUEST,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Timeout => StatusCode::REQUEST_TIMEOUT,
        ErrorKind::AlreadyExists => StatusCode::CONFLICT,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error_response(e: &QueryError) -> Response {
    let status = status_of(e.kind);
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e.message, "internal error");
    }
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": e.message, "sqlstate": e.sqlstate()}).to_string(),
    )
        .into_response();
    r.extensions_mut().insert(ErrorMessage(e.message.clone()));
    r
}

async fn ready(State(st): State<Arc<AppState>>) -> Response {
    if st.draining.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    if st.engine.get().is_none() {
        return (StatusCode::SERVICE_UNAVAILABLE, "recovering\n").into_response();
    }
    match st.readiness.get().map(|f| f()) {
        Some(Err(why)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
        _ => (StatusCode::OK, "ready\n").into_response(),
    }
}

/// Prometheus' scrape: every metric of this node, text format 0.0.4.
async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        st.metrics.render(),
    )
        .into_response()
}

/// The engine once the node serves, plus a concurrency permit.
fn admit(
    st: &AppState,
) -> Result<(Arc<QueryEngine>, tokio::sync::OwnedSemaphorePermit), QueryError> {
    // A draining node still serves whatever reaches it (it stops accepting connections
    // only once clients had `drain_wait_unready_ms` to go elsewhere).
    let engine = st.engine.get().cloned().ok_or_else(|| {
        QueryError::new(
            ErrorKind::Unavailable,
            "the node is still recovering; retry shortly",
        )
    })?;
    let permit = st.permits.clone().try_acquire_owned().map_err(|_| {
        st.metrics
            .http_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        QueryError::new(
            ErrorKind::Unavailable,
            "too many concurrent requests (http_max_concurrent_requests); retry shortly",
        )
    })?;
    Ok((engine, permit))
}

async fn sql(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let metrics = &st.metrics;
    // Whether a statement ran (and was counted); if none did, the refusal is counted.
    let mut ran = false;
    let result = async {
        let (engine, _permit) = admit(&st)?;
        let format =
            Format::parse(q.get("format").map(String::as_str)).map_err(QueryError::bad_input)?;
        let mut opts = QueryOptions::default();
        if let Some(rc) = q.get("read_consistency") {
            opts.read_consistency = ReadConsistency::parse(rc)?;
        }
        if let Some(t) = q.get("statement_timeout") {
            opts.statement_timeout = shoal_query::session::parse_timeout(t)?;
        }
        let text = std::str::from_utf8(&body)
            .map_err(|_| QueryError::bad_input("the SQL body is not UTF-8"))?;
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let sql_text = if is_json || text.trim_start().starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| QueryError::bad_input(format!("bad JSON body: {e}")))?;
            v.get("sql")
                .and_then(|s| s.as_str())
                .map(str::to_string)
                .ok_or_else(|| QueryError::bad_input("JSON body needs a string field \"sql\""))?
        } else {
            text.to_string()
        };
        let out = engine
            .execute_observed(&sql_text, &opts, who, |stmt, took, r| {
                ran = true;
                metrics.statement(Protocol::SqlHttp, stmt, took, r);
            })
            .await?;
        Ok::<_, QueryError>((format, out))
    }
    .await;
    if let Err(e) = &result {
        if !ran {
            metrics.refused(Protocol::SqlHttp, StatusClass::of_error(e));
        }
    }
    match result {
        Err(e) => error_response(&e),
        Ok((_, QueryOutput::Command { tag, rows })) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            json!({"command": tag, "rows": rows}).to_string(),
        )
            .into_response(),
        Ok((fmt, QueryOutput::Rows { schema, batches })) => {
            match format::encode(fmt, &schema, &batches) {
                Ok(bytes) => (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, fmt.content_type())],
                    bytes,
                )
                    .into_response(),
                Err(e) => error_response(&QueryError::new(ErrorKind::Internal, e)),
            }
        }
    }
}

/// Decompresses a gzip body, refusing to inflate past `max` bytes.
fn decode_body(headers: &HeaderMap, body: Bytes, max: u64) -> Result<Bytes, QueryError> {
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().eq_ignore_ascii_case("gzip"));
    match gzip {
        None | Some(false) => {
            if let Some(enc) = headers
                .get(header::CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok())
            {
                if !enc.trim().eq_ignore_ascii_case("identity") {
                    return Err(QueryError::bad_input(format!(
                        "unsupported Content-Encoding {enc:?}: use gzip or identity"
                    )));
                }
            }
            Ok(body)
        }
        Some(true) => {
            let mut out = Vec::with_capacity(body.len() * 4);
            let mut dec = flate2::read::GzDecoder::new(&body[..]).take(max + 1);
            dec.read_to_end(&mut out)
                .map_err(|e| QueryError::bad_input(format!("bad gzip body: {e}")))?;
            if out.len() as u64 > max {
                return Err(QueryError::new(
                    ErrorKind::TooLarge,
                    format!("decompressed body exceeds max_body_bytes ({max} bytes)"),
                ));
            }
            Ok(Bytes::from(out))
        }
    }
}

/// The request key that makes a retried write idempotent.
fn request_key(headers: &HeaderMap, q: &HashMap<String, String>, body: &[u8]) -> u64 {
    if let Some(k) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        return shoal_common::hash::partition_hash(k.as_bytes());
    }
    let mut h = shoal_common::hash::body_hash(body);
    for k in ["db", "bucket", "precision", "rp", "org"] {
        if let Some(v) = q.get(k) {
            h ^= shoal_common::hash::partition_hash(format!("{k}={v}").as_bytes()).rotate_left(7);
        }
    }
    h
}

async fn write_common(
    st: &AppState,
    who: &Principal,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
    default_precision: Precision,
    rejected_lines: &mut u64,
) -> Result<shoal_query::WriteOutcome, QueryError> {
    let (engine, _permit) = admit(st)?;
    shoal_query::access::authorize(
        &*st.gate.catalog()?,
        who,
        Some(shoal_consensus::users::Role::Writer),
        "writing rows",
    )?;
    let precision = match q.get("precision") {
        None => default_precision,
        Some(p) => Precision::parse(p).ok_or_else(|| {
            QueryError::bad_input(format!(
                "unknown precision {p:?}: use ns, us, ms, s (v1 also n, u, m, h)"
            ))
        })?,
    };
    let body = decode_body(headers, body, st.max_body_bytes)?;
    let key = request_key(headers, q, &body);
    ingest::write_lines(&engine, &body, precision, key)
        .await
        .inspect_err(|_| *rejected_lines = count_lines(&body))
}

/// Lines of a line-protocol body (the last one need not end in a newline).
fn count_lines(body: &[u8]) -> u64 {
    let newlines = body.iter().filter(|b| **b == b'\n').count() as u64;
    newlines + u64::from(body.last().is_some_and(|b| *b != b'\n'))
}

/// The body InfluxDB v2 clients expect on an error (`code` + `message`).
fn v2_error(e: &QueryError) -> Response {
    let status = status_of(e.kind);
    let code = match status {
        StatusCode::BAD_REQUEST => "invalid",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::PAYLOAD_TOO_LARGE => "request too large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "internal error",
    };
    let body = json!({"code": code, "message": e.message}).to_string();
    let mut r = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    r.extensions_mut().insert(ErrorMessage(e.message.clone()));
    r
}

async fn write_with(
    st: &AppState,
    who: &Principal,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
    protocol: Protocol,
    on_error: fn(&QueryError) -> Response,
) -> Response {
    // Bytes as received (compressed, if the client sent gzip).
    let bytes = body.len() as u64;
    let mut lines = 0;
    let written = write_common(
        st,
        who,
        q,
        headers,
        body,
        Precision::Nanoseconds,
        &mut lines,
    );
    match written.await {
        Ok(outcome) => {
            st.metrics
                .ingest(protocol, StatusClass::Success, bytes, outcome.rows);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => {
            st.metrics
                .ingest(protocol, StatusClass::of_error(&e), bytes, 0);
            st.metrics.rejected(protocol, e.kind, lines);
            on_error(&e)
        }
    }
}

async fn write_v1(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write_with(
        &st,
        &who,
        &q,
        &headers,
        body,
        Protocol::InfluxV1,
        error_response,
    )
    .await
}

async fn write_v2(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write_with(&st, &who, &q, &headers, body, Protocol::InfluxV2, v2_error).await
}

/// HTTPS (`certs_dir`): connections whose TLS handshake finished, each handshake in its
/// own task (see `shoal_transport::tls::accept_tls`). Dropping it stops accepting.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    local: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
}

impl TlsListener {
    /// At most `max_handshakes` handshakes run at once; the excess is closed at accept.
    pub fn new(
        listener: tokio::net::TcpListener,
        tls: Arc<shoal_transport::tls::Tls>,
        max_handshakes: usize,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let stop = tokio_util::sync::CancellationToken::new();
        let config = tls.server_config(false, &[b"http/1.1"]);
        let rx = shoal_transport::tls::accept_tls(
            listener,
            tls,
            config,
            max_handshakes,
            "https",
            stop.clone(),
        );
        Ok(TlsListener { rx, local, stop })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;
    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn lines_of_a_body() {
        assert_eq!(super::count_lines(b""), 0);
        assert_eq!(super::count_lines(b"a v=1"), 1);
        assert_eq!(super::count_lines(b"a v=1\n"), 1);
        assert_eq!(super::count_lines(b"a v=1\nb v=2"), 2);
        assert_eq!(super::count_lines(b"a v=1\n\nb v=2\n"), 3);
    }

    use super::*;

    /// Before recovery finishes the node is live but not ready, and other routes say so.
    #[tokio::test]
    async fn not_ready_until_the_engine_is_set() {
        let state = Arc::new(AppState {
            engine: OnceLock::new(),
            draining: AtomicBool::new(false),
            max_body_bytes: 1024 * 1024,
            permits: Arc::new(Semaphore::new(4)),
            readiness: OnceLock::new(),
            gate: crate::gate::Gate::new(false),
            metrics: Arc::new(NodeMetrics::new(0)),
            request_ids: Arc::new(crate::requests::RequestIds::new(9)),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                with_request_ids(state.clone(), router(state))
                    .into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
        let http = reqwest::Client::new();
        let get = |p: &str| http.get(format!("http://{addr}{p}")).send();
        assert_eq!(get("/health/live").await.expect("live").status(), 200);
        // The console's page answers from the start too (it holds no data).
        let page = get("/").await.expect("page");
        assert_eq!(page.status(), 200);
        assert_eq!(
            page.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let ready = get("/health/ready").await.expect("ready");
        assert_eq!(ready.status(), 503);
        assert_eq!(ready.text().await.expect("text"), "recovering\n");
        let sql = http
            .post(format!("http://{addr}/v1/sql"))
            .body("SELECT 1")
            .send()
            .await
            .expect("sql");
        assert_eq!(sql.status(), 503);
        // Every answer names its request: a new id, or the client's own if harmless.
        let id = sql.headers()[REQUEST_ID]
            .to_str()
            .expect("ascii")
            .to_string();
        assert!(id.starts_with("9-"), "{id}");
        let again = http
            .post(format!("http://{addr}/v1/sql"))
            .header(REQUEST_ID, "trace-42")
            .body("SELECT 1")
            .send()
            .await
            .expect("sql");
        assert_eq!(again.headers()[REQUEST_ID], "trace-42");
        let forged = http
            .post(format!("http://{addr}/v1/sql"))
            .header(REQUEST_ID, "a b=c")
            .body("SELECT 1")
            .send()
            .await
            .expect("sql");
        let id2 = forged.headers()[REQUEST_ID].to_str().expect("ascii");
        assert!(id2.starts_with("9-") && id2 != id, "{id2}");
        // Metrics answer from the start, before the node serves (the hot-path series only).
        let m = get("/metrics").await.expect("metrics");
        assert_eq!(m.status(), 200);
        assert_eq!(
            m.headers()[header::CONTENT_TYPE],
            crate::metrics::CONTENT_TYPE
        );
        let text = m.text().await.expect("text");
        let rows = "shoal_ingest_rows_total{node=\"0\",protocol=\"influx_v1\"} 0";
        assert!(text.lines().any(|l| l == rows), "{text}");
        server.abort();
    }

    /// A script's 401 carries no Basic challenge (the browser would open its own dialog).
    #[test]
    fn scripts_get_no_basic_challenge() {
        let mut h = HeaderMap::new();
        assert!(wants_challenge(&h));
        h.insert(
            "x-requested-with",
            header::HeaderValue::from_static("shoal-console"),
        );
        assert!(!wants_challenge(&h));
    }
}
