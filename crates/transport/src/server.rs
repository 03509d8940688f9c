//! The bounded RPC server: a connection cap enforced at accept (the excess is closed at
//! once with a log line), HTTP/2 stream and message-size limits, the service's in-flight
//! budgets, and a phased shutdown:
//!
//! 1. stop accepting (the listener closes) and send GOAWAY on every connection;
//! 2. let queued and in-flight requests finish, up to `drain_timeout`;
//! 3. cut whatever is left (every connection's reads and writes fail at once);
//! 4. join the server task.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Client-reset streams one connection may have pending before the server drops it.
const MAX_PENDING_RESETS: usize = 1024;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::rpc::{PeerHandler, PeerService, ServiceLimits};
use crate::tls::{Stream, Tls, HANDSHAKE_TIMEOUT};

#[derive(Clone, Debug)]
pub struct ServerLimits {
    pub service: ServiceLimits,
    /// Connections open at once; the excess is closed at accept.
    pub max_connections: usize,
    /// HTTP/2 streams per connection.
    pub max_streams_per_connection: u32,
    /// How long shutdown waits for in-flight requests before cutting them.
    pub drain_timeout: Duration,
}

/// A connection that holds a slot of the connection cap and can be cut by a kill switch.
pub struct LimitedConn {
    io: Stream,
    _permit: OwnedSemaphorePermit,
    kill: CancellationToken,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl LimitedConn {
    fn cut(&mut self, cx: &mut Context<'_>) -> bool {
        self.kill.is_cancelled() || self.killed.as_mut().poll(cx).is_ready()
    }
}

impl Connected for LimitedConn {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.io.tcp().connect_info()
    }
}

impl AsyncRead for LimitedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.cut(cx) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        Pin::new(&mut self.io).poll_read(cx, b)
    }
}

impl AsyncWrite for LimitedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.cut(cx) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        Pin::new(&mut self.io).poll_write(cx, b)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.cut(cx) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, b)
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Accepts connections while fewer than `max` are open (the excess is closed at once);
/// with `tls`, each connection's mutual-TLS handshake runs in a task of its own (within
/// [`crate::tls::HANDSHAKE_TIMEOUT`], holding a slot) and only peers whose certificate
/// the cluster CA signed come out. Stops accepting with `stop`.
fn limited_incoming(
    listener: TcpListener,
    max: usize,
    tls: Option<Arc<Tls>>,
    stop: CancellationToken,
    kill: CancellationToken,
    refused: Arc<AtomicU64>,
    slots: Arc<Semaphore>,
) -> impl futures::Stream<Item = io::Result<LimitedConn>> {
    let max = max.max(1);
    let (tx, rx) = tokio::sync::mpsc::channel::<LimitedConn>(max);
    let acceptor = tls
        .as_ref()
        .map(|t| tokio_rustls::TlsAcceptor::from(t.server_config(true, &[b"h2"])));
    tokio::spawn(async move {
        loop {
            let (io, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                // tonic stopped taking connections.
                _ = tx.closed() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "rpc accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                // Log the first refusal and then every 100th, so a flood cannot flood
                // the log too.
                let n = refused.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(100) {
                    tracing::warn!(%peer, max, refused_total = n + 1, "rpc_max_connections reached; closing new connection");
                }
                continue;
            };
            let _ = io.set_nodelay(true);
            let kill = kill.clone();
            let conn = move |io| LimitedConn {
                io,
                _permit: permit,
                killed: Box::pin(kill.clone().cancelled_owned()),
                kill,
            };
            match (&acceptor, &tls) {
                (Some(acceptor), Some(tls)) => {
                    let (acceptor, tls, tx) = (acceptor.clone(), tls.clone(), tx.clone());
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io));
                    let make = move |s| conn(Stream::Tls(Box::new(s)));
                    tokio::spawn(async move {
                        match handshake.await {
                            Ok(Ok(s)) => {
                                let _ = tx.send(make(s)).await;
                            }
                            Ok(Err(e)) => tls.refused("rpc (mutual TLS)", peer, &e),
                            Err(_) => tls.refused("rpc (mutual TLS)", peer, &"handshake timed out"),
                        }
                    });
                }
                _ => {
                    if tx.send(conn(Stream::Plain(io))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    tokio_stream_from(rx)
}

/// The receiving end of a channel as a stream of `Ok` items.
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = io::Result<T>> {
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|x| (Ok(x), rx)) },
    )
}

/// A running RPC server.
pub struct RpcServer {
    pub addr: std::net::SocketAddr,
    stop: CancellationToken,
    kill: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    drain_timeout: Duration,
    pub refused_connections: Arc<AtomicU64>,
    pub inflight: Arc<std::sync::atomic::AtomicUsize>,
    /// One permit per connection `rpc_max_connections` allows; those taken are open.
    pub connection_slots: Arc<Semaphore>,
    pub max_connections: usize,
}

impl RpcServer {
    /// Serves `handler` on `listener` until [`RpcServer::shutdown`].
    pub fn start<H: PeerHandler>(
        listener: TcpListener,
        handler: Arc<H>,
        limits: ServerLimits,
        tls: Option<Arc<Tls>>,
    ) -> io::Result<RpcServer> {
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let kill = CancellationToken::new();
        let refused = Arc::new(AtomicU64::new(0));
        let service = PeerService::new(handler, limits.service.clone());
        let inflight = service.inflight();
        let max_connections = limits.max_connections.max(1);
        let slots = Arc::new(Semaphore::new(max_connections));
        let incoming = limited_incoming(
            listener,
            max_connections,
            tls,
            stop.clone(),
            kill.clone(),
            refused.clone(),
            slots.clone(),
        );
        let serve = tonic::transport::Server::builder()
            .max_concurrent_streams(limits.max_streams_per_connection)
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            // Peers cancel RPCs that time out (RST_STREAM). After a healed partition many
            // do at once; with h2's default allowance of 20 pending resets the server tore
            // down the whole connection (GOAWAY), failing every other group's heartbeats
            // on it. Bounded, but sized for 17 groups' worth of timed-out traffic.
            .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
        let task = tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "rpc server stopped");
            }
        });
        Ok(RpcServer {
            addr,
            stop,
            kill,
            task,
            drain_timeout: limits.drain_timeout,
            refused_connections: refused,
            inflight,
            connection_slots: slots,
            max_connections,
        })
    }

    /// Phased shutdown (see the module docs). Returns whether everything finished in time.
    pub async fn shutdown(mut self) -> bool {
        self.stop.cancel();
        let drained = tokio::time::timeout(self.drain_timeout, &mut self.task)
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                drain_timeout_ms = self.drain_timeout.as_millis() as u64,
                "rpc requests still in flight after the drain timeout; cutting them"
            );
            self.kill.cancel();
            let _ = (&mut self.task).await;
        }
        drained
    }
}
