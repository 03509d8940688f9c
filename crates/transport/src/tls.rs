//! TLS for every port (rustls with ring): one node certificate, signed by the cluster CA,
//! serves HTTPS, Postgres TLS and inter-node mutual TLS; peers must present a certificate
//! signed by the same CA.
//!
//! The files live in the node's `certs_dir` (as `shoal cert` writes them): `ca.crt`,
//! `node.crt`, `node.key`. [`Tls::reload`] reads them again (on SIGHUP): every
//! configuration built here reads the current material through [`Tls`] at each handshake,
//! so a reload changes what the next handshake uses and never touches a live connection.
//! A reload that fails (a missing or unreadable file, a certificate the CA did not sign,
//! a key that does not match) keeps the old material and says why.
//!
//! Handshakes never run in an accept loop: [`accept_tls`] gives each its own task, bounded
//! by [`HANDSHAKE_TIMEOUT`], so a client that stalls mid-handshake holds only its own
//! connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;

/// The CA certificate file in `certs_dir`.
pub const CA_CERT: &str = "ca.crt";
/// The node's certificate (chain) in `certs_dir`.
pub const NODE_CERT: &str = "node.crt";
/// The node's private key in `certs_dir`.
pub const NODE_KEY: &str = "node.key";

/// How long a TLS handshake may take from accept.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one load of `certs_dir` gave.
struct Material {
    key: Arc<CertifiedKey>,
    server_verifier: Arc<WebPkiServerVerifier>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    /// `node.crt` as read (Postgres channel binding hashes its first certificate).
    cert_pem: Arc<Vec<u8>>,
    /// When the node certificate or a CA certificate expires, whichever is sooner.
    expires_unix: i64,
}

/// The node's TLS material, reloadable.
pub struct Tls {
    dir: PathBuf,
    /// Names the node certificate must carry (the address peers dial).
    names: Vec<ServerName<'static>>,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Material>>,
    /// Handshakes refused (bad or missing peer certificate, protocol errors, timeouts).
    pub refused_handshakes: AtomicU64,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("dir", &self.dir).finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether `cert` is a node certificate: its extended key usage names server
/// authentication (`shoal cert create-node` sets it with client authentication; a user's
/// `create-client` certificate has client authentication only, so it cannot pass for a
/// node on the RPC port).
pub fn is_node_cert(cert: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .ok()
        .and_then(|(_, c)| {
            c.extended_key_usage()
                .ok()
                .flatten()
                .map(|e| e.value.server_auth)
        })
        .unwrap_or(false)
}

/// Unix seconds at which `cert` stops being valid.
fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, c) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(c.validity().not_after.timestamp())
}

fn load(
    dir: &Path,
    provider: &Arc<CryptoProvider>,
    names: &[ServerName<'static>],
) -> Result<Material, String> {
    let file = |name: &str| dir.join(name);
    // Each file is read once: what is checked is what is served.
    let read = |name: &str| {
        std::fs::read(file(name)).map_err(|e| format!("{}: {e}", file(name).display()))
    };
    let certs_of = |name: &str, pem: &[u8]| -> Result<Vec<CertificateDer<'static>>, String> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", file(name).display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate in it", file(name).display()));
        }
        Ok(certs)
    };
    let ca_pem = read(CA_CERT)?;
    let ca = certs_of(CA_CERT, &ca_pem)?;
    let cert_pem = read(NODE_CERT)?;
    let chain = certs_of(NODE_CERT, &cert_pem)?;
    let key_path = file(NODE_KEY);
    let key = PrivateKeyDer::from_pem_slice(&read(NODE_KEY)?)
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    let expires_unix = ca
        .iter()
        .chain(chain.iter().take(1))
        .filter_map(not_after)
        .min()
        .unwrap_or(0);
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", file(CA_CERT).display()))?;
    }
    let roots = Arc::new(roots);
    let server_verifier =
        WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("{}: {e}", file(CA_CERT).display()))?;
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("{}: {e}", file(CA_CERT).display()))?;
    // The node's own certificate must chain to the CA, be a node certificate, and name
    // every address peers and clients use for this node: peers check all of that, so a
    // mismatch here would only show up later as refused connections (and a reload that
    // swapped it in would cut the node off).
    let bad = |e: &dyn std::fmt::Display| {
        format!(
            "{} is not a valid node certificate for the CA in {}: {e} (make it with \
             `shoal cert create-node <every name and address of this node>`)",
            file(NODE_CERT).display(),
            file(CA_CERT).display()
        )
    };
    let now = UnixTime::now();
    client_verifier
        .verify_client_cert(&chain[0], &chain[1..], now)
        .map_err(|e| bad(&e))?;
    if !is_node_cert(&chain[0]) {
        return Err(bad(
            &"it lacks the serverAuth usage (a client certificate?)",
        ));
    }
    for name in names {
        server_verifier
            .verify_server_cert(&chain[0], &chain[1..], name, &[], now)
            .map_err(|e| bad(&format!("{e} (for {name:?})")))?;
    }
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    let key = CertifiedKey::new(chain, signing);
    key.keys_match().map_err(|e| {
        format!(
            "{} does not belong to {}: {e}",
            key_path.display(),
            NODE_CERT
        )
    })?;
    Ok(Material {
        key: Arc::new(key),
        server_verifier,
        client_verifier,
        cert_pem: Arc::new(cert_pem),
        expires_unix,
    })
}

impl Tls {
    /// Loads `ca.crt`, `node.crt` and `node.key` from `dir`; the node certificate must
    /// name each of `names` (the host of the address peers dial, when it is known).
    pub fn load(dir: &Path, names: &[&str]) -> Result<Arc<Tls>, String> {
        let provider = provider();
        let names = names
            .iter()
            .map(|n| ServerName::try_from(n.to_string()).map_err(|e| format!("{n:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let m = load(dir, &provider, &names)?;
        Ok(Arc::new(Tls {
            dir: dir.to_path_buf(),
            names,
            provider,
            current: RwLock::new(Arc::new(m)),
            refused_handshakes: AtomicU64::new(0),
        }))
    }

    /// The directory the material comes from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the files again; on any error the material in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let m = load(&self.dir, &self.provider, &self.names)?;
        *self.current.write() = Arc::new(m);
        Ok(())
    }

    fn material(&self) -> Arc<Material> {
        self.current.read().clone()
    }

    /// Unix seconds when the certificates in use expire (node or CA, whichever is first).
    pub fn expires_unix(&self) -> i64 {
        self.material().expires_unix
    }

    /// `node.crt` as PEM (for Postgres SCRAM channel binding).
    pub fn cert_pem(&self) -> Arc<Vec<u8>> {
        self.material().cert_pem.clone()
    }

    /// A server configuration presenting the node certificate; `peers` also demands a
    /// client certificate signed by the cluster CA (inter-node mutual TLS).
    pub fn server_config(
        self: &Arc<Self>,
        peers: bool,
        alpn: &[&[u8]],
    ) -> Arc<rustls::ServerConfig> {
        let builder = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        let builder = if peers {
            builder.with_client_cert_verifier(Arc::new(Current(self.clone())))
        } else {
            builder.with_no_client_auth()
        };
        let mut cfg = builder.with_cert_resolver(Arc::new(Current(self.clone())));
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }

    /// A client configuration for connecting to peers: it checks the peer's certificate
    /// against the cluster CA and the address dialled, and presents the node certificate.
    pub fn client_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Current(self.clone())))
            .with_client_cert_resolver(Arc::new(Current(self.clone())));
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }

    /// Counts a refused handshake and logs it (the first and every 100th: a flood of bad
    /// handshakes must not flood the log).
    pub fn refused(&self, what: &str, peer: SocketAddr, error: &dyn std::fmt::Display) {
        let n = self.refused_handshakes.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(100) {
            tracing::warn!(%peer, refused_total = n + 1, error = %error, "{what}: refused a TLS handshake");
        }
    }
}

/// The host part of `host:port` as a TLS server name (an IP address or a DNS name).
pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| format!("{addr:?}: {e}"))
}

/// Accepts TLS on `listener`'s connections, each handshake in its own task within
/// [`HANDSHAKE_TIMEOUT`]; finished ones come out of the returned channel. At most
/// `max_handshakes` run at once (the excess is closed at accept). Stops with `stop`.
pub fn accept_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<Tls>,
    config: Arc<rustls::ServerConfig>,
    max_handshakes: usize,
    what: &'static str,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)> {
    let (tx, rx) = tokio::sync::mpsc::channel(max_handshakes.max(1));
    let slots = Arc::new(tokio::sync::Semaphore::new(max_handshakes.max(1)));
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (sock, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "{what}: accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tls.refused(what, peer, &"too many TLS handshakes under way");
                continue;
            };
            let _ = sock.set_nodelay(true);
            let (acceptor, tx, tls) = (acceptor.clone(), tx.clone(), tls.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send((s, peer)).await;
                    }
                    Ok(Err(e)) => tls.refused(what, peer, &e),
                    Err(_) => tls.refused(what, peer, &"handshake timed out"),
                }
            });
        }
    });
    rx
}

/// An accepted connection, with or without TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Reads the current material at every use (see the module docs).
#[derive(Debug)]
struct Current(Arc<Tls>);

impl rustls::server::ResolvesServerCert for Current {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.material().key.clone())
    }
}

impl rustls::client::ResolvesClientCert for Current {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.material().key.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

impl ServerCertVerifier for Current {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.material().server_verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .material()
            .server_verifier
            .verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .material()
            .server_verifier
            .verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.material().server_verifier.supported_verify_schemes()
    }
}

impl ClientCertVerifier for Current {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints would borrow from material a reload may replace; clients have one
        // certificate to offer anyway.
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Client authentication is asked for on the RPC port only: peers there must be
        // nodes, not users holding a certificate from the same CA.
        let ok =
            self.0
                .material()
                .client_verifier
                .verify_client_cert(end_entity, intermediates, now)?;
        if !is_node_cert(end_entity) {
            return Err(rustls::Error::General(
                "not a node certificate (no serverAuth usage): a client certificate cannot \
                 act as a node"
                    .into(),
            ));
        }
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .material()
            .client_verifier
            .verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .material()
            .client_verifier
            .verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.material().client_verifier.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_dialled_address() {
        assert_eq!(
            server_name("10.0.0.1:7000").unwrap(),
            ServerName::try_from("10.0.0.1").unwrap()
        );
        assert_eq!(
            server_name("[::1]:7000").unwrap(),
            ServerName::try_from("::1").unwrap()
        );
        assert_eq!(
            server_name("db-1.example:7000").unwrap(),
            ServerName::try_from("db-1.example").unwrap()
        );
        assert!(server_name("bad name:1").is_err());
    }

    #[test]
    fn a_directory_without_certificates_is_refused_with_the_file_named() {
        let dir = std::env::temp_dir().join(format!("shoal-tls-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = Tls::load(&dir, &[]).unwrap_err();
        assert!(e.contains("ca.crt"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
