//! One Postgres connection's life, from accept to close: admission, SSL negotiation, the
//! startup and authentication phase under a deadline, then the message loop.
//!
//! ```text
//!  accept ─▶ pending pool (pg_max_pending_connections; full: the oldest pending one is cut)
//!        ─▶ SSLRequest/GSSENCRequest answered 'N' ─▶ startup + authentication
//!           (within pg_auth_timeout_ms) ─▶ a session slot (pg_max_connections; none:
//!           FATAL 53300) ─▶ queries until Terminate or EOF
//! ```
//!
//! Why two pools: a connection that never finishes its startup must not hold one of the
//! slots authenticated sessions use, or 256 idle sockets lock every client out (outside
//! testing did exactly that). Unauthenticated connections share a small pool of their own
//! and get `pg_auth_timeout_ms` to authenticate; when the pool is full the oldest pending
//! connection is closed to make room, so an attacker must keep opening connections faster
//! than a real client finishes its handshake (a few milliseconds) to lock it out, and
//! authenticated sessions are never touched.
//!
//! Every frontend message passes [`crate::pgframe::Checked`] before pgwire decodes it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pgwire::api::{ClientInfo, DefaultClient, PgWireConnectionState, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::server::{process_error, process_message, PgWireMessageServerCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio_util::codec::Framed;

use crate::pgframe::{Checked, MALFORMED};
use shoal_transport::tls::Stream;

/// The connection limits, from the node's configuration.
#[derive(Clone, Debug)]
pub struct PgLimits {
    /// `pg_max_connections`: authenticated sessions at once.
    pub max_sessions: usize,
    /// `pg_max_pending_connections`: connections still in startup or authentication.
    pub max_pending: usize,
    /// `pg_auth_timeout_ms`: time from accept to an authenticated session.
    pub auth_timeout: Duration,
    /// `max_body_bytes`: the largest frontend message.
    pub max_message_bytes: usize,
}

/// Who may hold a connection: the session slots and the pending pool.
pub struct Admission {
    limits: PgLimits,
    sessions: Arc<Semaphore>,
    pending: parking_lot::Mutex<VecDeque<(u64, Arc<Notify>)>>,
    next_id: AtomicU64,
    /// Connections cut to make room, for the rate-limited log line.
    evicted: AtomicU64,
}

/// A connection's place in the pending pool; leaving it (drop) frees the place.
struct PendingSlot {
    admission: Arc<Admission>,
    id: u64,
    evict: Arc<Notify>,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.admission
            .pending
            .lock()
            .retain(|(id, _)| *id != self.id);
    }
}

impl Admission {
    pub fn new(limits: PgLimits) -> Arc<Admission> {
        Arc::new(Admission {
            sessions: Arc::new(Semaphore::new(limits.max_sessions.max(1))),
            pending: Default::default(),
            next_id: AtomicU64::new(1),
            evicted: AtomicU64::new(0),
            limits,
        })
    }

    /// The session slots, taken by authentication (`pgauth`).
    pub fn sessions(&self) -> Arc<Semaphore> {
        self.sessions.clone()
    }

    /// Connections cut from the pending pool to make room (`pg_max_pending_connections`).
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Takes a place in the pending pool, cutting the oldest pending connection if full.
    fn enter(self: &Arc<Self>, peer: SocketAddr) -> PendingSlot {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evict = Arc::new(Notify::new());
        let mut q = self.pending.lock();
        while q.len() >= self.limits.max_pending.max(1) {
            if let Some((_, victim)) = q.pop_front() {
                victim.notify_one();
                let n = self.evicted.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(100) {
                    tracing::warn!(
                        %peer,
                        evicted_total = n + 1,
                        max_pending = self.limits.max_pending,
                        "pg: too many connections still authenticating \
                         (pg_max_pending_connections); closed the oldest"
                    );
                }
            }
        }
        q.push_back((id, evict.clone()));
        PendingSlot {
            admission: self.clone(),
            id,
            evict,
        }
    }
}

/// A raw FATAL ErrorResponse, for refusing a connection outside pgwire's codec.
pub fn fatal_message(code: &str, msg: &str) -> Vec<u8> {
    let mut body = vec![];
    for (k, v) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', code), (b'M', msg)] {
        body.push(k);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = vec![b'E'];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// Answers SSLRequest (with `tls`: 'S' and the TLS handshake; without: 'N') and
/// GSSENCRequest ('N'), and returns the connection with the first eight bytes of the
/// startup message that follows. `None` when the connection is done with: with `tls`, a
/// client that starts without TLS is refused (FATAL 28000); a client that sends too many
/// requests gets FATAL 08P01; a failed handshake is counted and logged (`Tls::refused`).
async fn negotiate(
    mut sock: TcpStream,
    peer: SocketAddr,
    tls: Option<&PgTls>,
) -> std::io::Result<Option<(Stream, [u8; 8])>> {
    // At most one of each request may come before the startup message.
    for _ in 0..3 {
        let mut head = [0u8; 8];
        sock.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if len == 8 && code == SSL_REQUEST {
            if let Some(t) = tls {
                sock.write_all(b"S").await?;
                let mut s = match t.acceptor.accept(sock).await {
                    Ok(s) => s,
                    Err(e) => {
                        t.tls.refused("pg", peer, &e);
                        return Ok(None);
                    }
                };
                let mut head = [0u8; 8];
                s.read_exact(&mut head).await?;
                return Ok(Some((Stream::Tls(Box::new(s)), head)));
            }
            sock.write_all(b"N").await?;
            continue;
        }
        if len == 8 && code == GSSENC_REQUEST {
            sock.write_all(b"N").await?;
            continue;
        }
        if tls.is_some() {
            tracing::debug!(%peer, "pg: refused a connection without TLS");
            let _ = sock
                .write_all(&fatal_message(
                    "28000",
                    "this node requires TLS: connect with sslmode=require, or verify-full \
                     with the cluster CA (sslrootcert=ca.crt)",
                ))
                .await;
            return Ok(None);
        }
        return Ok(Some((Stream::Plain(sock), head)));
    }
    let why = format!("{MALFORMED}: too many encryption requests");
    let _ = sock.write_all(&fatal_message("08P01", &why)).await;
    Ok(None)
}

/// TLS for Postgres clients (`certs_dir`).
pub struct PgTls {
    pub tls: Arc<shoal_transport::tls::Tls>,
    pub acceptor: tokio_rustls::TlsAcceptor,
}

type Socket<H> = Framed<
    Checked<Stream>,
    PgWireMessageServerCodec<
        <<H as Handlers>::Extended as pgwire::api::query::ExtendedQueryHandler>::Statement,
    >,
>;

/// The handlers one connection uses (a narrower view of `PgWireServerHandlers` that names
/// the extended-query handler's type, which the codec needs).
pub trait Handlers: PgWireServerHandlers + Send + Sync {
    type Extended: pgwire::api::query::ExtendedQueryHandler;
    fn extended(&self) -> Arc<Self::Extended>;
    fn scram(&self) -> bool;
    /// Ids for the errors sent, and their log lines.
    fn request_ids(&self) -> &crate::requests::RequestIds;
}

/// Runs one connection to its end.
pub async fn serve_connection<H: Handlers>(
    sock: TcpStream,
    peer: SocketAddr,
    handlers: H,
    admission: Arc<Admission>,
    tls: Option<Arc<PgTls>>,
) {
    let _ = sock.set_nodelay(true);
    let slot = admission.enter(peer);
    let deadline = tokio::time::Instant::now() + admission.limits.auth_timeout;
    let negotiated = tokio::select! {
        n = negotiate(sock, peer, tls.as_deref()) => n,
        _ = tokio::time::sleep_until(deadline) => {
            if let Some(t) = &tls {
                t.tls.refused("pg", peer, &"no startup within pg_auth_timeout_ms");
            }
            return;
        }
        _ = slot.evict.notified() => return,
    };
    let Ok(Some((sock, head))) = negotiated else {
        return;
    };
    let secure = sock.is_tls();
    let checked = Checked::new(
        sock,
        &head,
        handlers.scram(),
        admission.limits.max_message_bytes,
    );
    let codec = PgWireMessageServerCodec::new(DefaultClient::new(peer, secure));
    let mut socket: Socket<H> = Framed::new(checked, codec);
    socket.set_state(PgWireConnectionState::AwaitingStartup);

    // Startup and authentication, against the deadline and eviction.
    while matches!(
        socket.state(),
        PgWireConnectionState::AwaitingStartup | PgWireConnectionState::AuthenticationInProgress
    ) {
        let msg = tokio::select! {
            m = socket.next() => m,
            _ = tokio::time::sleep_until(deadline) => {
                tracing::debug!(%peer, "pg: authentication timed out (pg_auth_timeout_ms)");
                let _ = send_fatal(&mut socket, "08006", "authentication timed out").await;
                return;
            }
            _ = slot.evict.notified() => {
                let _ = send_fatal(&mut socket, "53300", "too many connections authenticating; try again").await;
                return;
            }
        };
        if !handle(&mut socket, msg, &handlers, peer).await {
            return;
        }
    }
    if !matches!(
        socket.state(),
        PgWireConnectionState::ReadyForQuery
            | PgWireConnectionState::QueryInProgress
            | PgWireConnectionState::AwaitingSync
            | PgWireConnectionState::CopyInProgress(_)
    ) {
        return;
    }
    // Authenticated: the session slot was taken by the startup handler (`pgauth`), and
    // the connection leaves the pending pool.
    if socket
        .session_extensions()
        .get::<crate::pgauth::SessionSlot>()
        .is_none()
    {
        return;
    }
    drop(slot);
    loop {
        let msg = socket.next().await;
        if !handle(&mut socket, msg, &handlers, peer).await {
            return;
        }
    }
}

async fn send_fatal<St>(
    socket: &mut Framed<Checked<Stream>, PgWireMessageServerCodec<St>>,
    code: &str,
    msg: &str,
) -> std::io::Result<()> {
    let info = ErrorInfo::new("FATAL".into(), code.into(), msg.into());
    socket
        .send(PgWireBackendMessage::ErrorResponse(info.into()))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    socket
        .close()
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Handles one frontend message (or the end of the stream); false ends the connection.
/// Gives an error the client is sent its request id (in DETAIL, after any detail it had)
/// and writes its log line.
pub(crate) fn tag_error(info: &mut ErrorInfo, ids: &crate::requests::RequestIds, peer: SocketAddr) {
    let id = ids.next();
    info.detail = Some(match info.detail.take() {
        Some(d) => format!("{d}\nrequest id: {id}"),
        None => format!("request id: {id}"),
    });
    // Classes 53 (resources), 58 (system), XX (internal) and 57 (operator intervention:
    // shutting down, recovering) are the server's side; the rest the client's.
    let server_side = ["53", "57", "58", "XX"]
        .iter()
        .any(|c| info.code.starts_with(c));
    ids.failed(&crate::requests::Failure {
        protocol: "postgres",
        request_id: &id,
        code: &info.code,
        what: &peer.to_string(),
        error: &info.message,
        server_side,
    });
}

async fn handle<H: Handlers>(
    socket: &mut Socket<H>,
    msg: Option<Result<PgWireFrontendMessage, PgWireError>>,
    handlers: &H,
    peer: SocketAddr,
) -> bool {
    let msg = match msg {
        None => return false,
        Some(Ok(m)) => m,
        Some(Err(PgWireError::IoError(e))) if e.to_string().starts_with(MALFORMED) => {
            tracing::warn!(%peer, error = %e, "pg: closing a connection that sent a malformed message");
            let _ = send_fatal(socket, "08P01", &e.to_string()).await;
            return false;
        }
        Some(Err(PgWireError::IoError(_))) => return false,
        Some(Err(e)) => {
            tracing::debug!(%peer, error = %e, "pg: undecodable message");
            let _ = send_fatal(socket, "08P01", &format!("protocol violation: {e}")).await;
            return false;
        }
    };
    if matches!(msg, PgWireFrontendMessage::Terminate(_)) {
        return false;
    }
    let is_cancel = matches!(msg, PgWireFrontendMessage::CancelRequest(_));
    let extended = match socket.state() {
        PgWireConnectionState::CopyInProgress(extended) => extended,
        _ => msg.is_extended_query(),
    };
    let r = process_message(
        msg,
        socket,
        handlers.startup_handler(),
        handlers.simple_query_handler(),
        handlers.extended(),
        handlers.copy_handler(),
        handlers.cancel_handler(),
    )
    .await;
    if let Err(mut e) = r {
        if let PgWireError::UserError(info) = &mut e {
            tag_error(info, handlers.request_ids(), peer);
        }
        let fatal = e.is_fatal();
        if process_error(socket, e, extended).await.is_err() || fatal {
            return false;
        }
    }
    !is_cancel
}
