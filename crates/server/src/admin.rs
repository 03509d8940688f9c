//! The admin API on the HTTP port, and who may use it.
//!
//! | route | what |
//! |---|---|
//! | `GET /admin/v1/nodes` | every node: addresses, lifecycle, SWIM state, replicas, leaderships, disk, version, uptime (`system.nodes`) |
//! | `GET /admin/v1/nodes/{id}` | one node |
//! | `POST /admin/v1/nodes/{id}/drain` | drains node `id` and keeps it up (answers the [`DrainReport`]) |
//! | `POST /admin/v1/nodes/{id}/undrain` | ends node `id`'s drain |
//! | `POST /admin/v1/nodes/{id}/decommission` | starts decommissioning node `id` (it may be down); 409 with every blocker if it could not finish |
//! | `POST /admin/v1/nodes/{id}/recommission` | cancels node `id`'s decommission while in progress |
//! | `POST /admin/v1/decommission` | `{"nodes": [4, 5]}`: decommissions several nodes at once, checked together |
//! | `POST /admin/v1/users/{name}/password` | `{"password": "…"}`: sets a user's password (the way back in when every admin password is lost: see below) |
//! | `POST /health/drain` | drains this node (the same as `/admin/v1/nodes/<this node>/drain`) |
//!
//! With `admin_token` (or `admin_token_file`) set, every one of them needs
//! `Authorization: Bearer <token>`: 401 without it, 403 with another (compared in constant
//! time). With no token they answer only clients on loopback. A drain or undrain of another
//! node is passed on to that node's HTTP address with the caller's `Authorization` header;
//! a decommission is group 0's business and is answered by whichever node is asked.
//!
//! Once the cluster has users, an admin user (Basic or a token) may call them too. The
//! admin token stays valid alongside, and that is the recovery path when every admin
//! password is lost: whoever can set `admin_token_file` on one node and restart it (root on
//! that host) can set a new password — the same trust CockroachDB places in whoever holds
//! the CA key to mint a root client certificate.
//!
//! [`DrainReport`]: crate::lifecycle::DrainReport

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use shoal_consensus::Registry;
use subtle::ConstantTimeEq;

use crate::config::Secret;
use crate::http::AppState;
use crate::lifecycle::Lifecycle;
use shoal_cluster::controller::{Controller, DecommissionError};
use shoal_transport::tls::Tls;

/// How long a request passed on to another node may take (a drain waits
/// `drain_wait_unready_ms` and then hands leaderships off).
const PROXY_TIMEOUT: Duration = Duration::from_secs(120);

/// Who may call the admin API.
#[derive(Clone, Debug)]
pub enum AdminAuth {
    /// Callers must present this bearer token.
    Token(Secret),
    /// No token configured: loopback callers only.
    LoopbackOnly,
}

/// Whether a caller from `peer` presenting `authorization` may use the admin API; the
/// refusal is the status and the message to answer. Pure.
pub fn authorize(
    auth: &AdminAuth,
    authorization: Option<&str>,
    peer: IpAddr,
) -> Result<(), (StatusCode, &'static str)> {
    match auth {
        AdminAuth::LoopbackOnly if peer.is_loopback() => Ok(()),
        AdminAuth::LoopbackOnly => Err((
            StatusCode::FORBIDDEN,
            "the admin API answers only loopback clients while no admin_token is configured; set admin_token_file on every node to use it over the network",
        )),
        AdminAuth::Token(want) => {
            let Some(got) = authorization
                .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            else {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    "the admin API needs an Authorization: Bearer <admin_token> header",
                ));
            };
            if bool::from(got.trim().as_bytes().ct_eq(want.0.as_bytes())) {
                Ok(())
            } else {
                Err((StatusCode::FORBIDDEN, "wrong admin token"))
            }
        }
    }
}

/// What the admin routes need.
pub struct AdminState {
    pub auth: AdminAuth,
    pub node_id: u64,
    pub http: Arc<AppState>,
    pub lifecycle: Arc<Lifecycle>,
    pub registry: OnceLock<Arc<Registry>>,
    pub controller: OnceLock<Arc<Controller>>,
    /// Calls to other nodes' admin API (HTTPS when the cluster serves it).
    client: reqwest::Client,
    scheme: &'static str,
}

impl AdminState {
    pub fn new(
        auth: AdminAuth,
        node_id: u64,
        http: Arc<AppState>,
        lifecycle: Arc<Lifecycle>,
        tls: Option<&Arc<Tls>>,
    ) -> Result<AdminState, String> {
        let mut client = reqwest::Client::builder().timeout(PROXY_TIMEOUT);
        if let Some(tls) = tls {
            // The node's own client configuration: it checks the other node's certificate
            // against the cluster CA (as reloaded on SIGHUP) and the address dialled.
            let cfg = (*tls.client_config(&[b"http/1.1"])).clone();
            client = client.use_preconfigured_tls(cfg);
        }
        Ok(AdminState {
            auth,
            node_id,
            http,
            lifecycle,
            registry: OnceLock::new(),
            controller: OnceLock::new(),
            client: client
                .build()
                .map_err(|e| format!("the admin API's HTTP client: {e}"))?,
            scheme: if tls.is_some() { "https" } else { "http" },
        })
    }
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/health/drain", post(drain_here))
        .route("/admin/v1/nodes", get(list_nodes))
        .route("/admin/v1/nodes/{id}", get(one_node))
        .route("/admin/v1/nodes/{id}/{action}", post(node_action))
        .route("/admin/v1/decommission", post(decommission_many))
        .route("/admin/v1/users/{name}/password", post(set_password))
        // Every route above answers only callers `authorize` lets in; a route added here
        // is covered without remembering to check.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_admin,
        ))
        .with_state(state)
}

/// Refuses (401/403, logged with the caller's address) a caller the admin API does not
/// let in; passes the others on.
async fn require_admin(
    State(st): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let authz = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let gate = &st.http.gate;
    // Once the cluster has users, a caller is an admin user or holds the admin token.
    let token_ok =
        matches!(st.auth, AdminAuth::Token(_)) && authorize(&st.auth, authz, peer.ip()).is_ok();
    if gate.required().unwrap_or(false) && !token_ok {
        let who = gate.http(authz, req.uri().query(), peer.ip());
        let checked = who.and_then(|who| {
            shoal_query::access::authorize(
                &*gate.catalog()?,
                &who,
                Some(shoal_consensus::users::Role::Admin),
                "the admin API",
            )
        });
        return match checked {
            Ok(()) => next.run(req).await,
            Err(e) => {
                tracing::info!(peer = %peer, "admin request refused: {}", e.message);
                error(crate::http::status_of(e.kind), e.message)
            }
        };
    }
    match authorize(&st.auth, authz, peer.ip()) {
        Ok(()) => next.run(req).await,
        Err((s, m)) => {
            tracing::info!(peer = %peer, status = s.as_u16(), "admin request refused");
            error(s, m)
        }
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": message.into()}).to_string(),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

fn json_ok(v: serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

async fn drain_here(State(st): State<Arc<AdminState>>) -> Response {
    drain_local(&st).await
}

async fn drain_local(st: &AdminState) -> Response {
    tracing::info!("drain asked through the admin API");
    let report = st.lifecycle.drain().await;
    json_ok(serde_json::to_value(report).unwrap_or_default())
}

/// `system.nodes` as JSON objects, optionally for one node.
async fn nodes_json(st: &AdminState, id: Option<u64>) -> Result<Vec<serde_json::Value>, Response> {
    let engine = st.http.engine.get().cloned().ok_or_else(recovering)?;
    let sql = match id {
        Some(id) => format!("SELECT * FROM system.nodes WHERE node_id = {id}"),
        None => "SELECT * FROM system.nodes ORDER BY node_id".to_string(),
    };
    let out = engine
        .execute(&sql, &shoal_query::QueryOptions::default())
        .await
        .map_err(|e| error(crate::http::status_of(e.kind), e.message))?;
    let shoal_query::QueryOutput::Rows { schema, batches } = out else {
        return Ok(vec![]);
    };
    let bytes = crate::format::to_jsonl(&schema, &batches)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect())
}

async fn list_nodes(State(st): State<Arc<AdminState>>) -> Response {
    match nodes_json(&st, None).await {
        Ok(rows) => json_ok(json!({"nodes": rows})),
        Err(r) => r,
    }
}

async fn one_node(State(st): State<Arc<AdminState>>, Path(id): Path<u64>) -> Response {
    match nodes_json(&st, Some(id)).await {
        Ok(rows) if rows.is_empty() => error(
            StatusCode::NOT_FOUND,
            format!("node {id} is not registered"),
        ),
        Ok(mut rows) => json_ok(rows.remove(0)),
        Err(r) => r,
    }
}

/// `POST /admin/v1/nodes/{id}/{action}`: `drain` or `undrain`, here or passed on.
async fn node_action(
    State(st): State<Arc<AdminState>>,
    Path((id, action)): Path<(u64, String)>,
    headers: HeaderMap,
) -> Response {
    match action.as_str() {
        "drain" | "undrain" => {}
        "decommission" => return decommission(&st, &[id]).await,
        "recommission" => return recommission(&st, id).await,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "no node action {action:?}: use drain, undrain, decommission or recommission"
                ),
            )
        }
    }
    if id != st.node_id {
        return pass_on(&st, id, &action, &headers).await;
    }
    if action == "drain" {
        return drain_local(&st).await;
    }
    match st.lifecycle.undrain().await {
        Ok(()) => json_ok(json!({"node_id": id, "undrained": true})),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// The body of `POST /admin/v1/decommission`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DecommissionBody {
    nodes: Vec<u64>,
}

/// Most nodes one request may decommission.
const DECOMMISSION_MAX_NODES: usize = 64;

async fn decommission_many(State(st): State<Arc<AdminState>>, body: axum::body::Bytes) -> Response {
    let b: DecommissionBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"nodes\": [<node id>, …]}}: {e}"),
            )
        }
    };
    if b.nodes.is_empty() || b.nodes.len() > DECOMMISSION_MAX_NODES {
        return error(
            StatusCode::BAD_REQUEST,
            format!("name 1 to {DECOMMISSION_MAX_NODES} nodes"),
        );
    }
    decommission(&st, &b.nodes).await
}

/// The body of `POST /admin/v1/users/{name}/password`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    password: String,
}

/// Sets user `name`'s password through group 0: 200, 400 for a bad body or password, 404
/// for an unknown user, 503 when group 0 cannot be reached. The password is never logged.
async fn set_password(
    State(st): State<Arc<AdminState>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    use shoal_consensus::users::{check_password, make_verifier, UserOp};
    let b: PasswordBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "expected {\"password\": \"<new password>\"}",
            )
        }
    };
    if let Err(e) = check_password(&b.password) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let Some(registry) = st.registry.get() else {
        return recovering();
    };
    let op = UserOp::SetPassword {
        name: name.clone(),
        verifier: make_verifier(&b.password),
    };
    let cmd = shoal_consensus::Command::Cluster(shoal_consensus::ClusterOp::User(op));
    match registry.propose_meta(cmd).await {
        Ok(shoal_consensus::Response::Rejected(why)) if why.contains("does not exist") => {
            error(StatusCode::NOT_FOUND, why)
        }
        Ok(shoal_consensus::Response::Rejected(why)) => error(StatusCode::CONFLICT, why),
        Ok(_) => {
            tracing::warn!(user = %name, "password set through the admin API");
            json_ok(json!({"user": name, "password_set": true}))
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("group 0 could not store the password: {e}"),
        ),
    }
}

fn recovering() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the node is still recovering; retry shortly",
    )
}

/// Starts decommissioning `ids` (see [`Controller::decommission`]): 200, or 409 naming
/// every blocker, or 503 when group 0 cannot be reached.
async fn decommission(st: &AdminState, ids: &[u64]) -> Response {
    let Some(c) = st.controller.get() else {
        return recovering();
    };
    tracing::info!(nodes = ?ids, "decommission asked through the admin API");
    match c.decommission(ids).await {
        Ok(()) => json_ok(json!({"decommissioning": ids})),
        Err(DecommissionError::Refused(blockers)) => {
            let all: Vec<String> = blockers.iter().map(|b| b.to_string()).collect();
            let body = json!({
                "error": format!("refused: the decommission could not finish: {}", all.join("; ")),
                "blockers": blockers
                    .iter()
                    .map(|b| json!({"vshard": b.vshard, "reason": b.reason}))
                    .collect::<Vec<_>>(),
            });
            (
                StatusCode::CONFLICT,
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response()
        }
        Err(DecommissionError::Unavailable(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn recommission(st: &AdminState, id: u64) -> Response {
    let Some(c) = st.controller.get() else {
        return recovering();
    };
    match c.recommission(id).await {
        Ok(()) => json_ok(json!({"node_id": id, "recommissioned": true})),
        Err(e) if e.contains("not registered") => error(StatusCode::NOT_FOUND, e),
        Err(e) if e.contains("could not confirm") => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

/// Passes `POST /admin/v1/nodes/{id}/{action}` on to node `id`.
async fn pass_on(st: &AdminState, id: u64, action: &str, headers: &HeaderMap) -> Response {
    let Some(registry) = st.registry.get() else {
        return recovering();
    };
    let Some(addr) = registry
        .catalog()
        .read()
        .nodes
        .get(&id)
        .map(|n| n.addrs.http.clone())
    else {
        return error(
            StatusCode::NOT_FOUND,
            format!("node {id} is not registered"),
        );
    };
    let mut req = st.client.request(
        Method::POST,
        format!("{}://{addr}/admin/v1/nodes/{id}/{action}", st.scheme),
    );
    if let Some(a) = headers.get(header::AUTHORIZATION) {
        req = req.header(header::AUTHORIZATION, a.clone());
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status();
            let body = r.bytes().await.unwrap_or_default();
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            format!("node {id} at {addr} did not answer: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_required_once_configured_and_compared_exactly() {
        let auth = AdminAuth::Token(Secret("s3cret".into()));
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let far: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            authorize(&auth, None, lo).unwrap_err().0,
            401,
            "loopback needs it too"
        );
        assert_eq!(
            authorize(&auth, Some("Basic czNjcmV0"), far).unwrap_err().0,
            401
        );
        assert_eq!(
            authorize(&auth, Some("Bearer s3cre"), far).unwrap_err().0,
            403
        );
        assert_eq!(
            authorize(&auth, Some("Bearer s3cret2"), far).unwrap_err().0,
            403
        );
        assert_eq!(authorize(&auth, Some("Bearer "), far).unwrap_err().0, 403);
        assert!(authorize(&auth, Some("Bearer s3cret"), far).is_ok());
    }

    #[test]
    fn without_a_token_only_loopback_callers_are_let_in_and_told_why_not() {
        let auth = AdminAuth::LoopbackOnly;
        assert!(authorize(&auth, None, "127.0.0.1".parse().unwrap()).is_ok());
        assert!(authorize(&auth, None, "::1".parse().unwrap()).is_ok());
        let (status, why) =
            authorize(&auth, Some("Bearer x"), "192.168.1.5".parse().unwrap()).unwrap_err();
        assert_eq!(status, 403);
        assert!(why.contains("admin_token"), "{why}");
    }
}
